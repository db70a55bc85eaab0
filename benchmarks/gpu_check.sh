#!/usr/bin/env bash
# One device call, a few minutes: the tiny pipeline on CUDA, then both benchmarks on a random-init
# model of Gemma-3-270M's shape. Prepare with benchmarks/gpu_prepare.sh; results land in $OUT.
set -euo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python - <<'PY' | tee "$OUT/missing.txt"
import importlib.util
needed = "torch transformers peft accelerate numpy pyarrow scipy pandas matplotlib".split()
print("missing from the image:", [m for m in needed if importlib.util.find_spec(m) is None] or "nothing")
PY
pip install -q --no-index --no-deps .device/wheels/*.whl
pip install -q --no-deps --no-build-isolation -e .
python -m ipykernel install --sys-prefix --name selfreward >/dev/null
gunzip -k -f .device/data/*/*.gz .device/gemma/tokenizer.json.gz
export SELFREWARD_DATA_DIR=$PWD/.device/data SELFREWARD_CACHE=/tmp/selfreward-cache
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
(time selfreward run params/tiny.yaml --out /tmp/gpu-runs --no-book --set model.device=cuda) \
    > "$OUT/tiny_pipeline.log" 2>&1 || echo "tiny pipeline failed: see tiny_pipeline.log"
tail -3 "$OUT/tiny_pipeline.log"
python benchmarks/bench_generate.py --random-init --config-dir .device/gemma --batch 256 --max-new-tokens 128 \
    --judged-candidates 128 --out "$OUT/bench_generate.json" 2>&1 | grep -v "it/s\]" | tail -40
python benchmarks/bench_train.py --random-init --config-dir .device/gemma --finetune full --batch 16 \
    --max-length 512 --out "$OUT/bench_train.json" 2>&1 | grep -v "it/s\]" | tail -40
