#!/usr/bin/env bash
# One device call, a few minutes: the tiny pipeline on CUDA, then both benchmarks on a random-init
# model of Gemma-3-270M's shape; where the machine has 2 GPUs, the tiny profile's training with
# launch.num_processes 2 (DDP over NCCL); where vllm imports, vLLM's tokens/s beside FastBackend and plain
# generate; `selfreward plan` of the GPU profiles. Prepare with benchmarks/gpu_prepare.sh; results in $OUT.
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
VLLM=$(python -c "import importlib.util; print('--vllm' if importlib.util.find_spec('vllm') else '')")
echo "vllm: ${VLLM:-not installed}" | tee "$OUT/vllm.txt"
python benchmarks/bench_generate.py --random-init --config-dir .device/gemma --batch 256 --max-new-tokens 128 \
    --judged-candidates 128 $VLLM --out "$OUT/bench_generate.json" 2>&1 | grep -v "it/s\]" | tail -40
GPUS=$(nvidia-smi --list-gpus | wc -l)
if [ "$GPUS" -ge 2 ]; then  # the multi-process path on real GPUs: DDP over NCCL
    (time selfreward run params/tiny.yaml --out /tmp/gpu-runs-ddp --no-book --set model.device=cuda \
        --set launch.num_processes=2 --set sft.logprobs=trl --set dpo.logprobs=trl \
        --set sft.per_device_batch_size=8 --set dpo.per_device_batch_size=4) > "$OUT/tiny_ddp.log" 2>&1 \
        || echo "2-GPU DDP run failed: see tiny_ddp.log"
    tail -3 "$OUT/tiny_ddp.log"
else
    echo "1 GPU: the 2-process DDP run is not checked here" | tee "$OUT/tiny_ddp.log"
fi
for profile in gpu-8b paper; do selfreward plan "params/$profile.yaml" > "$OUT/plan_$profile.txt" 2>&1 || true; done
python benchmarks/bench_train.py --random-init --config-dir .device/gemma --finetune full --batch 16 \
    --max-length 512 --out "$OUT/bench_train.json" 2>&1 | grep -v "it/s\]" | tail -40
