"""`selfreward plan PARAMS`: what a run will need, from the model's config alone (no weights loaded).

Per training stage, the memory each GPU holds (weights, gradients, optimizer state, activations at the
configured batch and length) under the run's launch (one process, DDP, FSDP, DeepSpeed ZeRO); per stage,
the tokens generated and judged; and times at a stated throughput. A profile whose training or
generation cannot fit the GPUs it names (`launch.gpu_memory_gb`) is refused.

The memory model, per GPU, in bytes (b: bytes of the model dtype, P: parameters, N: processes):
- full fine-tuning keeps fp32 master weights, gradients and Adam's two moments: 16 P; DPO adds the
  frozen reference model, b P. LoRA keeps the frozen weights, b P, and 16 bytes per adapter parameter.
- sharding (FSDP full shard, ZeRO-3) divides weights, gradients and optimizer state by N and gathers
  two layers at a time (b bytes each parameter); ZeRO-2 / FSDP SHARD_GRAD_OP divide gradients and
  optimizer state, ZeRO-1 the optimizer state; CPU offload moves what is sharded to the host's memory.
- activations (`method.budget`, the rules the trainers run by): with recomputation (the lean path's
  `recompute`, TRL's head on GPUs) each layer's input, h values per token, plus one layer recomputed,
  (6 h + 2 H d + 4 I) values per token; without it every layer's; in b bytes. The output layer: the lean
  one (`logprobs: selected`) a chunk of 64 positions' logits (an fp32 buffer and the logits in b bytes) and
  what it keeps for the backward (the gradient rows, [tokens, h] in fp32, when it is frozen; all logits
  only when it trains without recomputation); TRL's every position's logits at 4 + 4 + b bytes each (fp32
  log-softmax and its gradient). DPO rows are chosen + rejected.
- 2 GB for the CUDA context and workspace.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from selfreward.config import Config, ConfigError, load_accelerate_config, model_sequence
from selfreward.method import budget
from selfreward.method.launch import SHARDED, dpo_reference, load_dtype

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

GB = 1e9
CUDA_CONTEXT = 2 * GB
OASST_REPLIES_PER_PROMPT = 3.03  # the offline mirror: 3,941 ranked replies to 1,300 prompts
TOKENS_PER_EXAMPLE = 0.5  # share of max_length an OASST example fills on average (upper bound: 1)


@dataclass(frozen=True)
class Architecture:
    """What memory depends on in a Llama/Gemma-style decoder (gated MLP, grouped-query attention)."""
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool  # output layer shares the embedding

    def layer_parameters(self) -> int:
        h, d = self.hidden, self.head_dim
        attention = h * self.heads * d * 2 + h * self.kv_heads * d * 2  # q and o; k and v
        return attention + 3 * h * self.intermediate + 2 * h  # gate, up, down; two norms

    def parameters(self) -> int:
        embedding = self.vocab * self.hidden
        return embedding * (1 if self.tied else 2) + self.layers * self.layer_parameters() + self.hidden

    def lora_parameters(self, r: int) -> int:
        """PEFT's all-linear LoRA: r (in + out) for every linear layer of the decoder, not the output layer."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
        return self.layers * r * per_layer


LLAMA_2_70B = Architecture(8192, 80, 28672, 64, 8, 128, 32000, False)
LLAMA_3_8B = Architecture(4096, 32, 14336, 32, 8, 128, 128256, False)
GEMMA_3_270M = Architecture(640, 18, 2048, 4, 1, 256, 262144, True)
# configs of the models the profiles name, so that `plan` works offline; anything else is read with AutoConfig
KNOWN_ARCHITECTURES = {
    "meta-llama/Llama-2-70b-hf": LLAMA_2_70B, "meta-llama/Llama-2-70b-chat-hf": LLAMA_2_70B,
    "meta-llama/Llama-3.1-8B": LLAMA_3_8B, "meta-llama/Llama-3.1-8B-Instruct": LLAMA_3_8B,
    "google/gemma-3-270m": GEMMA_3_270M, "embedded:gemma-3-270m": GEMMA_3_270M,
}


def from_hf_config(config) -> Architecture:
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    return Architecture(text.hidden_size, text.num_hidden_layers, text.intermediate_size, heads,
                        getattr(text, "num_key_value_heads", None) or heads,
                        getattr(text, "head_dim", None) or text.hidden_size // heads, text.vocab_size,
                        bool(getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False))))


def architecture(spec: str, model_cfg) -> Architecture:
    if spec in KNOWN_ARCHITECTURES:
        return KNOWN_ARCHITECTURES[spec]
    if spec == "tiny":  # models.build_tiny_model
        h = model_cfg.tiny_hidden_size
        return Architecture(h, model_cfg.tiny_layers, 2 * h, 4, 2, h // 4, model_cfg.tiny_vocab_size, True)
    from transformers import AutoConfig

    try:
        return from_hf_config(AutoConfig.from_pretrained(spec))
    except Exception as err:  # offline, gated, misspelt
        raise ConfigError(f"model.spec: cannot read the config of {spec} ({type(err).__name__}); plan knows "
                          f"{', '.join(KNOWN_ARCHITECTURES)} offline") from None


@dataclass(frozen=True)
class Strategy:
    name: str
    kind: str = "single"  # as method.training.Processes.parallelism: single, ddp, fsdp, deepspeed
    shard_weights: bool = False
    shard_gradients: bool = False
    shard_optimizer: bool = False
    offload: bool = False  # what is sharded lives in the host's memory


def strategy(launch) -> Strategy:
    """How training spreads over the launch's processes, read from its accelerate config."""
    if launch.accelerate_config is None:
        return Strategy("one process", "single") if launch.num_processes == 1 else Strategy("DDP", "ddp")
    cluster = load_accelerate_config(launch.accelerate_config)
    kind = str(cluster.distributed_type).rsplit(".", 1)[-1]
    if kind == "FSDP":
        fsdp = cluster.fsdp_config or {}
        sharding = str(fsdp.get("fsdp_reshard_after_forward", fsdp.get("fsdp_sharding_strategy", "FULL_SHARD")))
        full = sharding.upper() in ("FULL_SHARD", "1", "TRUE")
        offload = bool(fsdp.get("fsdp_offload_params", False))
        return Strategy("FSDP full shard" if full else "FSDP shard grad op", "fsdp", full, True, True, offload)
    if kind == "DEEPSPEED":
        ds = cluster.deepspeed_config or {}
        stage = int(ds.get("zero_stage", 0))
        offload = ds.get("offload_optimizer_device", "none") not in ("none", None)
        return Strategy(f"DeepSpeed ZeRO-{stage}", "deepspeed", stage >= 3, stage >= 2, stage >= 1, offload)
    return Strategy("DDP", "ddp")


def dtype_bytes(model_cfg) -> int:
    # a plan is for GPUs: auto means bfloat16 there
    return 4 if model_cfg.dtype == "float32" else 2


def training_memory(arch: Architecture, model_cfg, train_cfg, strat: Strategy, world: int, dpo: bool) -> dict:
    """Bytes per GPU of one training stage, by part (see the module docstring)."""
    b, p = dtype_bytes(model_cfg), arch.parameters()
    loaded = BYTES[load_dtype(model_cfg.finetune, "float32" if b == 4 else "bfloat16", strat.kind)]
    if model_cfg.finetune == "full":
        # fp32 master weights either way: loaded in fp32 (one process, DDP) or loaded in the compute dtype and
        # upcast shard by shard (FSDP2, ZeRO-3); then fp32 gradients and Adam's two moments
        weights, gradients, optimizer, adapter = 4 * p, 4 * p, 8 * p, 0
    else:
        weights, gradients, optimizer = loaded * p, 0, 0
        adapter = 16 * arch.lora_parameters(model_cfg.lora_r)
    # DPO's reference log-probs are precomputed before training (method.launch.dpo_reference): no reference
    # model is held while training; under FSDP a sharded copy exists for the precompute pass only
    reference = loaded * p if dpo and dpo_reference(model_cfg.finetune, strat.kind) == "a sharded copy" else 0
    host = 0
    shard = {"weights": strat.shard_weights, "gradients": strat.shard_gradients,
             "optimizer": strat.shard_optimizer, "reference": strat.shard_weights}
    parts = {"weights": weights, "gradients": gradients, "optimizer": optimizer, "reference": reference}
    for name, sharded in shard.items():
        if sharded:
            parts[name] /= world
            if strat.offload:
                host += parts[name] * world
                parts[name] = 0
    parts["adapter"] = adapter
    parts["gathered_layers"] = 2 * arch.layer_parameters() * b if strat.shard_weights else 0
    rows = train_cfg.per_device_batch_size * (2 if dpo else 1)
    tokens = rows * train_cfg.max_length
    a, lean = arch, train_cfg.logprobs == "selected"
    recompute = train_cfg.recompute if lean else True  # (TRL's head recomputes on GPUs, which a plan is for)
    parts["activations"] = tokens * b * budget.activation_values(a.layers, a.hidden, a.heads, a.head_dim,
                                                                 a.intermediate, recompute)
    parts["logits"] = sum(budget.head_bytes(tokens, a.vocab, a.hidden, b, model_cfg.finetune == "full",
                                            recompute).values()) if lean else budget.trl_head_bytes(tokens, a.vocab, b)
    parts["cuda_context"] = CUDA_CONTEXT
    # the precompute pass holds the policy and the sharded reference, not yet gradients and optimizer state
    precompute = parts["reference"] + parts["weights"] + parts["gathered_layers"] + CUDA_CONTEXT
    total = max(sum(v for k, v in parts.items() if k != "reference"), precompute)
    # rank 0 reads the checkpoint into host memory and (full fine-tuning, FSDP) upcasts it before sharding
    loading = (4 if model_cfg.finetune == "full" else loaded) * p if strat.kind in SHARDED else 0
    return {"parts": parts, "total": total, "host_offload": host, "host_loading_rank0": loading}


def _replies(cfg: Config) -> float:
    return cfg.data.eft_source_size * OASST_REPLIES_PER_PROMPT


def generated_tokens(cfg: Config) -> dict[str, dict]:
    """At most how many tokens each generating stage writes (every generation at its length limit)."""
    j, si, c, e = cfg.judge, cfg.self_instruct, cfg.candidates, cfg.evaluation
    per_judgment = j.max_new_tokens
    stages = {"eft": {"judged": round(_replies(cfg) * j.samples), "tokens": round(_replies(cfg) * j.samples
                                                                                  * per_judgment)}}
    for t in range(1, cfg.iterations + 1):
        candidates = si.num_prompts * c.n
        stages[f"iteration_{t}"] = {
            "judged": candidates * j.samples,
            "tokens": si.num_prompts * si.max_new_tokens + candidates * c.max_new_tokens
            + candidates * j.samples * per_judgment}
    if e.enabled:
        models = len(model_sequence(cfg.iterations))
        stages["evaluation"] = {"judged": 0, "tokens": cfg.data.eval_prompts * models * e.max_new_tokens}
    return stages


def training_examples(cfg: Config) -> dict[str, tuple[int, str]]:
    """Rows and the section that trains them, per training stage (upper bounds where filtering decides)."""
    eft_examples = round(_replies(cfg))
    stages = {"sft_baseline": (cfg.data.ift_size, "sft"), "m1": (cfg.data.ift_size + eft_examples, "sft")}
    for t in range(1, cfg.iterations + 1):
        stages[f"iteration_{t}"] = (cfg.self_instruct.num_prompts,
                                    "dpo" if cfg.aift.objective == "dpo" else "sft")
    return stages


def make_plan(cfg: Config, tokens_per_second: float = 2000.0, train_tflops: float = 200.0) -> dict:
    """The plan of a run (see the module docstring); times at `tokens_per_second` generated per engine
    and `train_tflops` sustained per GPU (6 P FLOPs per trained token, 4 P with LoRA; DPO adds the
    reference's forward, 2 P)."""
    arch = architecture(cfg.model.spec, cfg.model)
    strat, world, gpu = strategy(cfg.launch), cfg.launch.num_processes, cfg.launch.gpu_memory_gb * GB
    p = arch.parameters()
    training = {}
    for stage, (rows, section) in training_examples(cfg).items():
        train_cfg = getattr(cfg, section)
        dpo = section == "dpo"
        memory = training_memory(arch, cfg.model, train_cfg, strat, world, dpo)
        tokens = rows * train_cfg.max_length * TOKENS_PER_EXAMPLE * train_cfg.epochs * (2 if dpo else 1)
        flops = tokens * ((6 if cfg.model.finetune == "full" else 4) + (2 if dpo else 0)) * p
        training[stage] = {"section": section, "rows": rows, "memory": memory, "tokens": tokens,
                           "hours": flops / (world * train_tflops * 1e12) / 3600}
    engines = cfg.generation.tensor_parallel_size if cfg.generation.backend == "vllm" else 1
    generation = {"weights_per_gpu": dtype_bytes(cfg.model) * p / engines,
                  "usable_per_gpu": gpu * (cfg.generation.gpu_memory_utilization
                                           if cfg.generation.backend == "vllm" else 1.0) - CUDA_CONTEXT,
                  "stages": {name: {**row, "hours": row["tokens"] / tokens_per_second / 3600}
                             for name, row in generated_tokens(cfg).items()}}
    return {"model": cfg.model.spec, "parameters": p, "architecture": dataclasses.asdict(arch),
            "strategy": strat.name, "processes": world, "gpu_memory_gb": cfg.launch.gpu_memory_gb,
            "training": training, "generation": generation,
            "assumptions": {"tokens_per_second": tokens_per_second, "train_tflops": train_tflops,
                            "tokens_per_example": TOKENS_PER_EXAMPLE,
                            "replies_per_eft_prompt": OASST_REPLIES_PER_PROMPT}}


def check_fits(plan: dict):
    """Refuse, in one line, a plan that does not fit its GPUs."""
    gpu = plan["gpu_memory_gb"]
    for stage, row in plan["training"].items():
        need = row["memory"]["total"] / GB
        if need > gpu:
            raise ConfigError(
                f"plan: {stage} needs {need:,.1f} GB per GPU ({plan['strategy']}, {plan['processes']} processes) "
                f"but launch.gpu_memory_gb is {gpu:g}; shard it or offload the shards (params/accelerate/fsdp.yaml, "
                f"fsdp_offload.yaml), use LoRA, or lower "
                f"{row['section']}.per_device_batch_size / max_length")
    g = plan["generation"]
    if g["weights_per_gpu"] > g["usable_per_gpu"]:
        raise ConfigError(f"plan: generation needs {g['weights_per_gpu'] / GB:,.1f} GB of weights per GPU but "
                          f"{g['usable_per_gpu'] / GB:,.1f} GB are usable; use generation.backend: vllm with a "
                          f"larger tensor_parallel_size")


def format_plan(plan: dict) -> str:
    a = plan["assumptions"]
    over = "" if plan["processes"] == 1 else f" over {plan['processes']} processes"
    lines = [f"{plan['model']}: {plan['parameters'] / 1e9:,.2f} B parameters; training with {plan['strategy']}{over}, "
             f"{plan['gpu_memory_gb']:g} GB per GPU",
             "", "training stage   rows   GB/GPU  (weights grads optim ref adapter gathered activ logits)  host GB"
             "  rank-0 load GB  tokens       hours", "                 (at most)"]
    for stage, row in plan["training"].items():
        m, parts = row["memory"], row["memory"]["parts"]
        detail = " ".join(f"{parts[k] / GB:.1f}" for k in ("weights", "gradients", "optimizer", "reference",
                                                           "adapter", "gathered_layers", "activations", "logits"))
        lines.append(f"{stage:<16} {row['rows']:>6} {m['total'] / GB:>8.1f}  ({detail})  {m['host_offload'] / GB:>7.1f}"
                     f"  {m['host_loading_rank0'] / GB:>14.1f}  {row['tokens']:>11,.0f}  {row['hours']:>6.2f}")
    g = plan["generation"]
    lines += ["", f"generation: {g['weights_per_gpu'] / GB:,.1f} GB of weights per GPU, "
                  f"{g['usable_per_gpu'] / GB:,.1f} GB usable",
              "stage            judgments  tokens (at most)   hours"]
    for stage, row in g["stages"].items():
        lines.append(f"{stage:<16} {row['judged']:>9,} {row['tokens']:>17,}  {row['hours']:>6.2f}")
    lines += ["", f"times at {a['tokens_per_second']:,.0f} generated tokens/s per engine and {a['train_tflops']:g} "
                  f"TFLOP/s per GPU in training; examples fill {a['tokens_per_example']:.0%} of max_length; "
                  f"{a['replies_per_eft_prompt']} replies per EFT prompt (OASST); DPO's reference log-probs are "
                  "precomputed (ref: the sharded copy of that pass, under FSDP); rank 0 reads the checkpoint into "
                  "host memory (rank-0 load) while the other ranks build on the meta device"]
    return "\n".join(lines)


def stage_estimate(cfg: Config, stage) -> tuple[float, str] | None:
    """What a training stage needs by the plan's rules, in GB on its device (a GPU's share, or the host's memory
    on a CPU, where no CUDA context is held), and the settings that decide it; None for a stage that trains
    nothing, or a model whose config cannot be read."""
    section = {"sft": "sft", "iteration": "dpo" if cfg.aift.objective == "dpo" else "sft", "variant": "dpo"}.get(
        stage.kind)
    if section is None:
        return None
    try:
        arch = architecture(cfg.model.spec, cfg.model)
    except ConfigError:
        return None
    train_cfg = getattr(cfg, section)
    memory = training_memory(arch, cfg.model, train_cfg, strategy(cfg.launch), cfg.launch.num_processes,
                             section == "dpo")
    on_cpu = cfg.model.device == "cpu" or (cfg.model.device == "auto" and not _has_cuda())
    need = (memory["total"] - (CUDA_CONTEXT if on_cpu else 0) + memory["host_loading_rank0"] * on_cpu) / GB
    return need, f"{section}.per_device_batch_size {train_cfg.per_device_batch_size}, {section}.max_length " \
                 f"{train_cfg.max_length}"


def machine_memory_gb(device: str) -> float | None:
    """The memory a stage can use: the first GPU's, or the host's (Linux: MemTotal)."""
    if device != "cpu" and _has_cuda():
        import torch

        return torch.cuda.get_device_properties(0).total_memory / GB
    try:
        with open("/proc/meminfo") as handle:
            return int(next(line for line in handle if line.startswith("MemTotal")).split()[1]) * 1024 / GB
    except (OSError, StopIteration):
        return None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
