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
    # the lean head, training (full fine-tuning) with recomputation: one chunk of 64 positions, fp32 and bf16 twice
    assert parts["logits"] == 64 * 2048 * (4 + 2 + 2) == 1_048_576
    assert memory["total"] == 2_000_000_000 + 16 * 336192 + 589_824 + 1_048_576 == 2_007_017_472
    assert memory["host_offload"] == 0
    trl = sizing.training_memory(SMALL, ModelConfig(finetune="full"), TrainConfig(per_device_batch_size=2,
                                 max_length=128, logprobs="trl"), sizing.Strategy("one process"), world=1, dpo=False)
    assert trl["parts"]["logits"] == 256 * 2048 * 10 == 5_242_880  # TRL's head: every position, fp32 twice
    without = sizing.training_memory(SMALL, ModelConfig(finetune="full"), TrainConfig(per_device_batch_size=2,
                                     max_length=128, recompute=False), sizing.Strategy("one process"), world=1, dpo=False)
    # every layer's activations (2 x 1024 values), and the head's logits kept for the backward (256 x 2048 bf16)
    assert without["parts"]["activations"] == 256 * 2 * 2 * 1024 and \
        without["parts"]["logits"] == 1_048_576 + 256 * 2048 * 2


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
    # chosen + rejected rows: twice the activations; the head's chunk is the same, 64 positions
    assert parts["activations"] == 2 * 589_824 and parts["logits"] == 1_048_576
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
    # a frozen head (LoRA): one chunk, and the [tokens, hidden] fp32 gradient rows kept for the backward
    tokens = 4 * 128
    assert memory["parts"]["logits"] == 64 * 2048 * 8 + tokens * 64 * 4


def test_the_plan_sizes_the_head_by_the_rule_the_trainer_runs_by():
    """`plan` and the lean trainer share one rule (`method.budget`): the chunk is the trainer's own, and what the
    plan counts for a frozen head is what the trainer keeps (tests/test_training.py counts that)."""
    from selfreward.method import budget
    from selfreward.method.lean import SelectedLogProbs

    assert SelectedLogProbs.CHUNK == budget.HEAD_CHUNK
    cfg = load_config(REPO / "params" / "cpu-small.yaml")
    arch = sizing.GEMMA_3_270M
    memory = sizing.training_memory(arch, cfg.model, cfg.sft, sizing.Strategy("one process"), world=1, dpo=False)
    tokens = cfg.sft.per_device_batch_size * cfg.sft.max_length
    assert memory["parts"]["logits"] == sum(budget.head_bytes(tokens, arch.vocab, arch.hidden, 2, False, True).values())
    assert memory["parts"]["logits"] < tokens * arch.vocab  # never a [tokens x vocabulary] tensor


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
