"""`selfreward lab RUN_DIR`: JupyterLab on a run's executed stage notebooks, with the `selfreward` kernel, so that
a user can read a stage, change a parameter and re-run its cells (`run.notebook` records that as a pipeline
action). The server's root is the run's notebooks/ folder, where each notebook's `run_dir = ".."` points to the
run; the token is Jupyter's own (JUPYTER_TOKEN, or the one it prints)."""
from __future__ import annotations

import os
import subprocess
import sys

from selfreward.config import ConfigError
from selfreward.run import notebooks
from selfreward.rundir import RunDir


def command(run: RunDir, port: int, browser: bool) -> list[str]:
    from selfreward.run.pipeline import KERNEL

    found = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={run.notebooks.resolve()}",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
             f"--MappingKernelManager.default_kernel_name={KERNEL}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # cloud GPU machines often log in as root
        found.append("--allow-root")
    return found + ([] if browser else ["--no-browser"])


def serve(run_dir, port: int = 8888, browser: bool = True) -> int:
    """Serve the run's notebooks until stopped (Ctrl-C); returns JupyterLab's exit code."""
    import importlib.util

    from selfreward.run.pipeline import ensure_kernel

    run = RunDir(run_dir)
    if not run.notebooks.is_dir() or not run.params.is_file():
        raise ConfigError(f"{run.root}: not a run folder with executed notebooks (run `selfreward run` first)")
    if importlib.util.find_spec("jupyterlab") is None:
        raise ConfigError("jupyterlab is not installed here: pip install jupyterlab")
    ensure_kernel()
    environment = {k: v for k, v in os.environ.items() if k not in (notebooks.PIPELINE, notebooks.NOTEBOOK_DIR)}
    print(f"serving {run.notebooks} on http://127.0.0.1:{port}/lab (Ctrl-C stops it)", flush=True)
    return subprocess.call(command(run, port, browser), env=environment)
