"""`selfreward plan`: parameter counts against real models, memory against hand-computed numbers."""
import subprocess
import sys
from pathlib import Path

import pytest

from selfreward.run import sizing
from selfreward.config import ConfigError, DPOConfig, ModelConfig, TrainConfig, load_config

REPO = Path(__file__).resolve().parent.parent
SMALL = sizing.Architecture(hidden=64, layers=2, intermediate=128, heads=4, kv_heads=2, head_dim=16, vocab=2048,
                            tied=False)


@pytest.mark.parametrize("tied", [False, True])
def test_parameter_counts_equal_a_real_model_and_its_lora(tied):
    import dataclasses

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    arch = dataclasses.replace(SMALL, tied=tied)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied))
    assert arch.parameters() == sum(p.numel() for p in model.parameters())
    assert sizing.from_hf_config(model.config) == arch
    lora = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert arch.lora_parameters(8) == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def test_memory_by_hand_one_process_full_sft():
    # P = 2*2048*64 + 2*(2*64*64 + 2*64*32 + 3*64*128 + 2*64) + 64 = 262144 + 2*36992 + 64 = 336192
    assert SMALL.parameters() == 336192
    memory = sizing.training_memory(SMALL, ModelConfig(finetune="full"), TrainConfig(per_device_batch_size=2,
                                    max_length=128), sizing.Strategy("one process"), world=1, dpo=False)
    parts = memory["parts"]
    assert parts["weights"] == parts["gradients"] == 4 * 336192 and parts["optimizer"] == 8 * 336192
    # 256 tokens x 2 bytes x (2 layers x 64 + 6 x 64 + 2 x 4 x 16 + 4 x 128 = 1152 values)
    assert parts["activations"] == 589_824
    assert parts["logits"] == 256 * 2048 * 10 == 5_242_880
    assert memory["total"] == 2_000_000_000 + 16 * 336192 + 589_824 + 5_242_880 == 2_011_211_776
    assert memory["host_offload"] == 0


def test_memory_by_hand_fsdp_full_shard_dpo_over_four_gpus():
    fsdp = sizing.Strategy("FSDP full shard", "fsdp", True, True, True)
    memory = sizing.training_memory(SMALL, ModelConfig(finetune="full"), DPOConfig(per_device_batch_size=2,
                                    max_length=128), fsdp, world=4, dpo=True)
    parts = memory["parts"]
    assert parts["weights"] == parts["gradients"] == 336192  # 4 P / 4
    # 8 P / 4; the reference: a bf16 copy, sharded, for the precompute pass only (not held while training)
    assert parts["optimizer"] == 672384 and parts["reference"] == 168096
    assert memory["total"] == sum(v for k, v in parts.items() if k != "reference")
    assert memory["host_loading_rank0"] == 4 * 336192  # rank 0 reads and upcasts all P = 336192 parameters, on the host
    assert parts["gathered_layers"] == 2 * 36992 * 2  # two layers in bf16
    assert parts["activations"] == 2 * 589_824 and parts["logits"] == 2 * 5_242_880  # chosen + rejected rows
    offload = sizing.training_memory(SMALL, ModelConfig(finetune="full"), DPOConfig(per_device_batch_size=2,
                                     max_length=128), sizing.Strategy("x", "fsdp", True, True, True, True), world=4,
                                     dpo=True)
    assert offload["host_offload"] == 16 * 336192 + 2 * 336192
    assert offload["total"] == memory["total"] - 336192 * 4
    for kind in ("deepspeed", "ddp"):  # the reference log-probs come from the policy itself before training
        other = sizing.training_memory(SMALL, ModelConfig(finetune="full"), DPOConfig(per_device_batch_size=2,
                                       max_length=128), sizing.Strategy(kind, kind, True, True, True), world=4, dpo=True)
        assert other["parts"]["reference"] == 0


def test_lora_keeps_frozen_weights_and_trains_adapters():
    memory = sizing.training_memory(SMALL, ModelConfig(finetune="lora", lora_r=8), TrainConfig(max_length=128),
                                    sizing.Strategy("one process", "single"), world=1, dpo=False)
    assert memory["parts"]["weights"] == 2 * 336192 and memory["parts"]["optimizer"] == 0
    assert memory["parts"]["adapter"] == 16 * SMALL.lora_parameters(8)


def plan(*args):
    return subprocess.run([sys.executable, "-m", "selfreward.cli", "plan", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_plan_of_the_paper_profile_prints_fsdp_memory_per_gpu():
    result = plan("params/paper.yaml")
    assert result.returncode == 0, result.stderr
    assert "meta-llama/Llama-2-70b-hf: 68.98 B parameters; training with FSDP full shard over 8 processes" \
        in result.stdout
    assert "iteration_2" in result.stdout and "GB/GPU" in result.stdout


def test_plan_refuses_a_profile_that_cannot_fit():
    # without CPU offload, full fine-tuning of 70B on 8 GPUs needs 16 B/param / 8 = 138 GB each
    result = plan("params/paper.yaml", "--set", "launch.accelerate_config=params/accelerate/fsdp.yaml")
    assert result.returncode == 2
    assert result.stderr.startswith("selfreward: error: plan: sft_baseline needs ") and "GB per GPU (FSDP full " \
        "shard, 8 processes) but launch.gpu_memory_gb is 80" in result.stderr
    assert result.stderr.count("\n") == 1


def test_every_gpu_profile_validates_and_fits(monkeypatch):
    monkeypatch.chdir(REPO)  # accelerate_config paths are relative to where selfreward runs
    for name in ("paper", "gpu-8b"):
        cfg = load_config(REPO / "params" / f"{name}.yaml")
        sizing.check_fits(sizing.make_plan(cfg))
    with pytest.raises(ConfigError, match="generation needs 138.0 GB of weights per GPU"):
        sizing.check_fits(sizing.make_plan(load_config(REPO / "params" / "paper.yaml",
                                                       ["generation.tensor_parallel_size=1"])))
