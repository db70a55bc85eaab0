"""The layout shows the architecture: each layer imports only from itself and the layers below it, and
every folder says what it holds."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "selfreward"
FOUNDATION = {"selfreward", "selfreward.config", "selfreward.models", "selfreward.paper", "selfreward.rundir",
              "selfreward.plugins", "selfreward.memory", "selfreward.io"}
LAYERS = ["foundation", "generation", "method", "evaluation", "run", "cli"]


def layer(module: str) -> str:
    if module == "selfreward.cli":
        return "cli"
    for name in ("generation", "method", "evaluation", "run"):
        if module == f"selfreward.{name}" or module.startswith(f"selfreward.{name}."):
            return name
    top = ".".join(module.split(".")[:2])
    assert top in FOUNDATION, f"{module} belongs to no layer"
    return "foundation"


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selfreward"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).exists()
                         or (PACKAGE.parent / (f"{node.module}.{a.name}".replace(".", "/") + ".py")).exists())
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("selfreward"))
    return found


@pytest.mark.parametrize("module,path", list(modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_a_module_imports_only_its_own_layer_and_those_below(module, path):
    own = LAYERS.index(layer(module))
    upward = sorted(m for m in imports(path) if LAYERS.index(layer(m)) > own)
    assert not upward, f"{module} ({layer(module)}) imports {upward}"


def test_generation_engines_never_import_back_up_and_training_launch_is_one_way():
    contract = imports(PACKAGE / "generation" / "contract.py")
    assert contract == set(), contract  # the contract imports nothing of selfreward
    for engine in ("plain.py", "vllm.py"):
        assert not {m for m in imports(PACKAGE / "generation" / engine) if m.startswith("selfreward.generation")} - {
            "selfreward.generation.contract"}
    assert "selfreward.method.training" not in imports(PACKAGE / "method" / "launch.py")
    assert "selfreward.method.worker" not in imports(PACKAGE / "method" / "training.py")


@pytest.mark.parametrize("folder", ["config", "generation", "generation/fast", "method", "evaluation",
                                    "evaluation/instruments", "run"])
def test_every_folder_says_what_it_holds(folder):
    docstring = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
    assert docstring and len(docstring) > 60, folder


def test_nothing_reads_a_stage_name_to_learn_what_the_stage_is():
    """A Stage says its kind, iteration and model; no module or notebook parses `iteration_2` or `variant_x`."""
    import re

    pattern = re.compile(r"""startswith\(["'](iteration|variant)_|stage\.split\(|stem\.split\(["']_""")
    sources = list(PACKAGE.rglob("*.py")) + list((PACKAGE.parent / "notebooks").glob("*.ipynb"))
    found = [str(p.relative_to(PACKAGE.parent)) for p in sources if pattern.search(p.read_text())]
    assert found == []
