#!/usr/bin/env bash
# Packs into .device/ (ignored by git) what benchmarks/gpu_check.sh needs on the device machine, whose
# image has torch, transformers, peft and accelerate but nothing else of ours and no network:
# - wheels of the other dependencies (for the device's Python, default 3.11), except the large binary
#   ones in $LARGE, which must come with the image: all of them would not fit in the 64 MiB a call
#   carries (pyarrow alone is 53 MiB). gpu_check.sh says first which imports are missing there.
# - the OASST / AlpacaEval mirror (gzipped), for the tiny pipeline,
# - Gemma-3-270M's config and tokenizer, no weights: the benchmarks use random weights of that shape.
# Then, with the device tool:  run  command="bash benchmarks/gpu_check.sh"  carry=[".device"]
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.11}
export LARGE=${LARGE:-"pyarrow scipy pandas matplotlib pillow fonttools debugpy jedi kiwisolver contourpy"}
DATA=${SELFREWARD_DATA_DIR:-../shared/data}
rm -rf .device && mkdir -p .device/wheels .device/data .device/gemma
# the versions installed here, without their dependencies (torch and the CUDA stack stay behind)
python - <<'PY' > .device/requirements.txt
from importlib.metadata import distribution, PackageNotFoundError
import re
import os
skip = set(os.environ["LARGE"].split()) | {"torch", "transformers", "peft", "accelerate", "numpy", "tokenizers", "safetensors", "huggingface-hub",
        "triton", "jinja2", "markupsafe", "sympy", "mpmath", "networkx", "filelock", "typing-extensions",
        "requests", "urllib3", "idna", "certifi", "charset-normalizer", "packaging", "pyyaml", "regex", "tqdm",
        "fsspec", "hf-xet", "setuptools", "psutil"}
todo, seen = ["trl", "datasets", "papermill", "ipykernel", "nbformat", "scipy", "matplotlib", "pandas"], {}
while todo:
    name = re.split(r"[ ;<>=!~\[(]", todo.pop())[0].lower().replace("_", "-")
    if name in seen or name in skip or name.startswith("nvidia-"):
        continue
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        continue
    seen[name] = dist.version
    todo += [r for r in (dist.requires or []) if "extra ==" not in r]
print("\n".join(f"{n}=={v}" for n, v in sorted(seen.items())))
PY
pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --platform manylinux_2_28_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .device/wheels -r .device/requirements.txt
for split in oasst/train.jsonl oasst/validation.jsonl eval/alpaca_eval.json; do
    mkdir -p ".device/data/$(dirname $split)" && gzip -c "$DATA/$split" > ".device/data/$split.gz"
done
GEMMA=$(python -c "from selfreward import models; print(models.resolve(models.EMBEDDED_GEMMA))")
cp "$GEMMA"/*.json .device/gemma/ && gzip -f .device/gemma/tokenizer.json
du -sh .device
