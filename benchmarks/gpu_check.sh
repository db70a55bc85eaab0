#!/usr/bin/env bash
# One device call, under 10 minutes on one GPU: the tiny pipeline on CUDA end to end; the tiny profile's
# training through accelerate with the shipped FSDP2 config (one process: the FSDP2 wrapping, bf16 mixed
# precision, cpu-RAM-efficient loading and the gathered save on a real GPU), and with ZeRO-3 where deepspeed
# imports; both benchmarks on a random-init model of Gemma-3-270M's shape (the fast engine and the lean
# trainers on CUDA: tokens/s, step time and peak memory against the library paths); where the machine has 2
# GPUs, DDP over NCCL; where vllm imports (its wheel is too large to carry), vLLM's tokens/s; `selfreward
# plan` of the GPU profiles. Prepare with benchmarks/gpu_prepare.sh; results in $OUT, summed up in
# $OUT/gpu_check.json.
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
SHARDED="--no-book --set model.device=cuda --set iterations=1 --set evaluation.enabled=false \
    --set sft.logprobs=trl --set dpo.logprobs=trl --set launch.num_processes=1"
(time selfreward run params/tiny.yaml --out /tmp/gpu-runs-fsdp $SHARDED \
    --set launch.accelerate_config=params/accelerate/fsdp.yaml) > "$OUT/tiny_fsdp2.log" 2>&1 \
    || echo "FSDP2 run failed: see tiny_fsdp2.log"
tail -3 "$OUT/tiny_fsdp2.log"
if python -c "import deepspeed" 2>/dev/null; then
    (time selfreward run params/tiny.yaml --out /tmp/gpu-runs-zero3 $SHARDED \
        --set launch.accelerate_config=params/accelerate/deepspeed_zero3.yaml) > "$OUT/tiny_zero3.log" 2>&1 \
        || echo "ZeRO-3 run failed: see tiny_zero3.log"
else
    echo "deepspeed is not in the image: ZeRO-3 is not checked here" > "$OUT/tiny_zero3.log"
fi
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
# the default path (LoRA: a frozen output layer, whose gradient rows the lean head forms in its forward), at the
# CPU benchmark's batch and length: peak GPU memory of one SFT and one DPO step against TRL's default
python benchmarks/bench_train.py --random-init --config-dir .device/gemma --finetune lora --batch 4 \
    --max-length 384 --out "$OUT/bench_train_lora.json" 2>&1 | grep -v "it/s\]" | tail -40
python - <<'PY'
import json, os, pathlib
out = pathlib.Path(os.environ.get("OUT", "/tmp/gpu_check"))
summary = {"gpu": (out / "gpu.txt").read_text().strip().splitlines()[-1] if (out / "gpu.txt").is_file() else None}
for run, folder in [("tiny", "/tmp/gpu-runs/tiny"), ("tiny_fsdp2", "/tmp/gpu-runs-fsdp/tiny"),
                    ("tiny_zero3", "/tmp/gpu-runs-zero3/tiny"), ("tiny_ddp", "/tmp/gpu-runs-ddp/tiny")]:
    manifest = pathlib.Path(folder) / "manifest.json"
    if manifest.is_file():
        stages = json.loads(manifest.read_text())["stages"]
        summary[run] = {name: {"status": e.get("status"), "seconds": e.get("duration_s"),
                               "peak_memory": e.get("peak_memory"),
                               "processes": e.get("counts", {}).get("train_processes")} for name, e in stages.items()}
for name in ("bench_generate.json", "bench_train.json", "bench_train_lora.json"):
    if (out / name).is_file():
        summary[name] = json.loads((out / name).read_text())
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
print("summary:", out / "gpu_check.json")
PY
