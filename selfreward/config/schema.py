"""The params schema: one dataclass per section, each with the rules of its own values, and `Config`
with the rules that join sections. `config.loading` builds these from YAML and validates them once.

Every rule raises ConfigError with a one-line message naming the dotted key.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import ipaddress
import json
import math
import re
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional


WHEN_SET = {"fingerprint": "when set"}  # field metadata: an option fingerprinted only when set (see _plain)
PLAN_ONLY = {"fingerprint": "never"}  # an option that decides which stages a run has, not what a stage computes


class ConfigError(ValueError):
    """A params file or override that cannot be used; the message is one line."""

    def _render_traceback_(self):  # in a notebook (IPython), the same one line as on the command line
        return [f"selfreward: error: {self}"]


@dataclass
class ModelConfig:
    spec: str = "embedded:gemma-3-270m"  # hub id, local path, embedded:gemma-3-270m or tiny
    # auto: bfloat16 where the hardware computes it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX),
    # float32 elsewhere (on an AVX2-only CPU a bf16 matmul is 5x or more slower than float32)
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = "auto"
    finetune: Literal["lora", "full"] = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    chat_format: Literal["auto", "gemma", "plain"] = "auto"
    device: str = "auto"  # auto = cuda when available, else cpu
    # only for spec "tiny": the size of the locally built random model
    tiny_hidden_size: int = 64
    tiny_layers: int = 2
    tiny_vocab_size: int = 2048

    def validate(self, key):
        _check(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None, f"{key}.device",
               f"expected auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        _positive(self, key, "lora_r", "lora_alpha", "tiny_hidden_size", "tiny_layers")
        _check(self.tiny_vocab_size >= 300, f"{key}.tiny_vocab_size", "must be at least 300")


@dataclass
class DataConfig:
    local_dir: Optional[str] = None  # offline mirror; None = env SELFREWARD_DATA_DIR, else the hub
    oasst_hub_id: str = "OpenAssistant/oasst1"
    alpaca_eval_hub_id: str = "tatsu-lab/alpaca_eval"
    # the model whose AlpacaEval outputs are the "reference" (AlpacaEval 2.0's GPT-4 Turbo); checked on load
    alpaca_eval_generator: str = "gpt4_1106_preview"
    mt_bench_hub_id: str = "HuggingFaceH4/mt_bench_prompts"  # or the mirror's eval/mt_bench_questions.jsonl
    ifeval_hub_id: str = field(default="google/IFEval", metadata=WHEN_SET)  # or the mirror's eval/ifeval.jsonl
    ift_size: int = 3200  # capped by what the data holds (after the EFT source is taken out)
    # training prompts with >= 2 ranked replies for the SFT baseline to judge, BEFORE the agreement filter:
    # only prompts whose judgments order the replies as the humans do become EFT examples (one per reply);
    # drawn first, so that no IFT prompt is an EFT prompt
    eft_source_size: int = 1630
    rm_eval_size: int = 0  # validation prompts for reward-model evaluation; 0 = all
    # more reward-model evaluation prompts: OASST train prompts with >= 2 ranked replies that are neither EFT
    # source nor IFT seed prompts (the mirror's validation split has only 186, too few for a 5-point MDE)
    rm_train_size: int = field(default=0, metadata=WHEN_SET)
    eval_prompts: int = 256  # AlpacaEval instructions for instruction-following evaluation
    max_prompt_chars: int = 2000
    max_response_chars: int = 4000

    def validate(self, key):
        _positive(self, key, "ift_size", "eft_source_size", "eval_prompts", "max_prompt_chars",
                  "max_response_chars")
        _check(self.rm_eval_size >= 0, f"{key}.rm_eval_size", "must be >= 0")
        _check(self.rm_train_size >= 0, f"{key}.rm_train_size", "must be >= 0")


@dataclass
class GenerationConfig:
    # fast: selfreward.generation.fast (same outputs, 5x on CPU); transformers: plain `generate`;
    # vllm: selfreward.generation.vllm (GPU, the `vllm` extra), with tensor parallelism over GPUs
    backend: Literal["transformers", "fast", "vllm"] = "fast"
    batch_size: int = 16
    # a batch holds at most batch_size x tokens_per_row padded tokens (prompt and new tokens): long prompts and
    # texts go in fewer rows. The memory of a batch (its KV cache, a prefill's activations) scales with it
    tokens_per_row: int = field(default=512, metadata=WHEN_SET)
    tensor_parallel_size: int = 1  # vllm only: GPUs one engine spans
    gpu_memory_utilization: float = 0.85  # vllm only: the share of each GPU's memory the engine may take
    max_model_len: int = 0  # vllm only: the longest prompt + generation the engine plans for; 0 = the model's own
    enforce_eager: bool = False  # vllm only: no CUDA graphs (slower decoding, faster start, less memory)

    def validate(self, key):
        _positive(self, key, "batch_size", "tensor_parallel_size", "tokens_per_row")
        _check(self.max_model_len >= 0, f"{key}.max_model_len", "must be >= 0 (0 = the model's own)")
        _check(0 < self.gpu_memory_utilization <= 1, f"{key}.gpu_memory_utilization", "must be in (0, 1]")


@dataclass
class JudgeConfig:
    # a key of selfreward.method.prompts.JUDGE_TEMPLATES (tests/test_config.py checks that the two agree)
    prompt: Literal["additive", "multiple_choice"] = "additive"
    samples: int = 3  # k judgments per response, averaged
    mode: Literal["sampled", "constrained"] = "sampled"
    constrained_reduce: Literal["expectation", "argmax"] = "expectation"
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256

    def validate(self, key):
        _positive(self, key, "samples", "max_new_tokens")
        _sampling(self, key)
        _check(self.temperature > 0 or self.samples == 1, f"{key}.temperature",
               "must be > 0 when samples > 1 (greedy decoding gives one judgment)")


@dataclass
class EFTConfig:
    rebalance: bool = True  # downsample the over-represented score, as the paper does
    max_share_per_score: float = 0.4  # the most frequent score is cut down to this share
    # the EFT stage stops with fewer examples; 0 = M1 may be trained on IFT alone (the paper's no-EFT ablation)
    min_examples: int = 1

    def validate(self, key):
        _check(0 < self.max_share_per_score <= 1, f"{key}.max_share_per_score", "must be in (0, 1]")
        _check(self.min_examples >= 0, f"{key}.min_examples", "must be >= 0")


@dataclass
class SelfInstructConfig:
    num_prompts: int = 1000  # new prompts sampled per iteration, before filtering
    prompt_model: str = "base"  # base = M0, current = M_t, or any model spec
    seed_shots: int = 6
    generated_shots: int = 2
    temperature: float = 0.6
    top_p: float = 0.9
    max_new_tokens: int = 128
    rouge_threshold: float = 0.7  # drop prompts this similar (ROUGE-L F) to a seed or kept prompt
    min_words: int = 3
    max_words: int = 150

    def validate(self, key):
        _positive(self, key, "num_prompts", "max_new_tokens", "min_words", "max_words")
        _check(self.seed_shots >= 1, f"{key}.seed_shots", "must be >= 1")
        _check(self.generated_shots >= 0, f"{key}.generated_shots", "must be >= 0")
        _check(0 < self.rouge_threshold <= 1, f"{key}.rouge_threshold", "must be in (0, 1]")
        _check(self.min_words <= self.max_words, f"{key}.min_words", "must be <= max_words")
        _sampling(self, key)


@dataclass
class CandidatesConfig:
    n: int = 4
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512

    def validate(self, key):
        _check(self.n >= 2, f"{key}.n", "must be >= 2 to form a preference pair")
        _positive(self, key, "max_new_tokens")
        _sampling(self, key)
        _check(self.temperature > 0, f"{key}.temperature", "must be > 0: greedy decoding gives N identical candidates")


@dataclass
class AIFTConfig:
    # dpo: M_{t+1} = DPO(M_t, pairs), the method; sft_positive: M_{t+1} = SFT(M_t, the candidates scored the
    # maximum), the paper's "positive examples only" ablation (trained with the `sft` section)
    objective: Literal["dpo", "sft_positive"] = "dpo"
    # checkpoint selection as in the paper: save every N training steps (0 = off, keep the last), and keep the
    # checkpoint whose answers to `select_prompts` held-out prompts win most against M_t's, judged by the
    # evaluation judge (evaluation.judge_model)
    select_every_steps: int = 0
    select_prompts: int = 0
    # The small-model fixes' options (selfreward.method.fixes: each fix declares its own keys, their defaults,
    # which are the paper's recipe, and their rules), written flat in the section (`aift.length_rho: 0.5`) and
    # kept here as given; `fixes.check` reads them against the registered fixes before any stage runs. Only
    # the keys set are fingerprinted, so that a run at the paper's recipe keeps its stages when a fix is added.
    options: dict = field(default_factory=dict, metadata={"rest": True})

    def validate(self, key):
        _check(self.select_every_steps >= 0, f"{key}.select_every_steps", "must be >= 0 (0 = off)")
        _check(self.select_prompts >= 0, f"{key}.select_prompts", "must be >= 0")
        _check(not self.select_every_steps or self.select_prompts > 0, f"{key}.select_prompts",
               "must be > 0 when select_every_steps is on")


@dataclass
class AblationConfig:
    """Variants of one self-rewarding iteration (the small-model fixes of the `aift` section), each from the
    same model as the run's own iteration from it (the paper's recipe), and compared with that iteration's
    model on the same instruments (evaluation.instruments.ablation). Each variant is a name and the `aift`
    keys it changes, plus `start` (a model m1 .. m_T of the run; default `start` below): e.g.
    {implicit: {reward: implicit}, consistency: {consistency: true, start: m2}}."""
    start: str = "m1"
    variants: dict = field(default_factory=dict)

    def validate(self, key):
        for name, overrides in self.variants.items():
            _check(re.fullmatch(r"[a-z][a-z0-9_]*", name) is not None, f"{key}.variants.{name}",
                   "a variant's name is lowercase letters, digits and _")
            _check(isinstance(overrides, dict), f"{key}.variants.{name}", "expected a mapping of aift keys to values")


@dataclass
class TrainConfig:
    learning_rate: float = 5.5e-6
    min_learning_rate: float = 1.1e-6  # cosine decay ends here
    batch_size: int = 16  # effective batch = per_device_batch_size * gradient accumulation
    per_device_batch_size: int = 4
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    max_length: int = 1024
    dropout: float = 0.1
    warmup_ratio: float = 0.0
    # selected: the loss projects only response tokens through the output layer (method.lean.token_logprobs),
    # a chunk of positions at a time, never holding [tokens x vocabulary] across the backward;
    # trl: TRL's default head (every position on CPU, plus entropy/accuracy metrics), kept for comparison
    logprobs: Literal["selected", "trl"] = "selected"
    # with logprobs: selected, the decoder's activations are recomputed in the backward (activation
    # checkpointing): a step holds one layer's activations instead of all of them, for one more forward pass
    # (about a third more compute; the lean step stays faster than TRL's). The trl head recomputes on GPUs only.
    recompute: bool = field(default=True, metadata=WHEN_SET)
    # anything else of TRL's SFTConfig / DPOConfig, passed through (weight_decay, optim, max_grad_norm, ...)
    trainer_args: dict = field(default_factory=dict)
    report_to: Literal["none", "tensorboard", "wandb"] = "none"  # an experiment tracker, where installed

    TRL_CONFIG = "SFTConfig"

    def validate(self, key):
        if self.trainer_args:
            _check_trainer_args(self.trainer_args, self.TRL_CONFIG, key)
        _check(self.learning_rate > 0, f"{key}.learning_rate", "must be > 0")
        _check(0 <= self.min_learning_rate <= self.learning_rate, f"{key}.min_learning_rate",
               "must be between 0 and learning_rate")
        _positive(self, key, "batch_size", "per_device_batch_size", "max_length")
        _check(self.batch_size % self.per_device_batch_size == 0, f"{key}.batch_size",
               "must be a multiple of per_device_batch_size")
        _check(self.epochs > 0, f"{key}.epochs", "must be > 0")
        _check(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")
        _check(0 <= self.warmup_ratio < 1, f"{key}.warmup_ratio", "must be in [0, 1)")


@dataclass
class DPOConfig(TrainConfig):
    learning_rate: float = 1e-6
    min_learning_rate: float = 1e-7
    beta: float = 0.1
    # 0, not the paper's 0.1: the reference is read without dropout, so a policy with dropout gives every reply
    # a lower log-probability in proportion to its length before any learning (an implicit reward of about -9
    # nats per reply on the embedded model at learning rate 0), and the longer reply of a pair a lower reward
    # for free. TRL's DPO disables dropout for this reason.
    dropout: float = 0.0

    TRL_CONFIG = "DPOConfig"

    def validate(self, key):
        super().validate(key)
        _check(self.beta > 0, f"{key}.beta", "must be > 0")


@dataclass
class EvaluationConfig:
    enabled: bool = True
    # the model that judges evaluations (head to head, the reference comparison): "base" (M0), a run model
    # (sft_baseline, m1, ...), any model spec, "endpoint", or "reward:<hub id or folder>", a sequence-classification
    # reward model that scores each answer alone (a comparison is won by the higher reward; MT-Bench needs a
    # generative judge and is left out with it)
    judge_model: str = "base"
    reward_tie_tolerance: float = field(default=0.0, metadata=WHEN_SET)  # rewards this close are a tie
    judge_mode: Literal["sampled", "constrained"] = "constrained"
    endpoint_base_url: Optional[str] = None  # an OpenAI-compatible API, e.g. https://api.openai.com/v1
    endpoint_model: Optional[str] = None
    endpoint_api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable; the key itself is never written
    endpoint_allow_http: bool = False  # plain http:// only to this machine unless this is true
    temperature: float = 0.7  # sampling of the evaluated responses
    top_p: float = 0.9
    max_new_tokens: int = 256
    reference: bool = True  # also judge each model against AlpacaEval's GPT-4 outputs
    rm_samples: int = 3  # judgments per reply when the models act as reward models
    # their sampling temperature; None = judge.temperature. 0: greedy reasoning, one judgment per reply, so that
    # two models' judgments differ by what the models are, not by sampling noise (smaller paired intervals)
    rm_temperature: Optional[float] = None
    rm_prompts: int = 0  # validation prompts judged by each model; 0 = the whole reward-model eval set
    # > 0: only prompts whose ranked replies are all at most this long (a deviation, for small CPU runs: a
    # 6,000-character reply makes a judge prompt 4x longer than the sliding window); 0 = every prompt
    rm_max_reply_chars: int = 0
    judge_prompt_ablation: bool = True  # SFT baseline as judge: additive vs multiple-choice prompt
    # judge-free: each model's log-likelihood of the human-ranked OASST validation replies
    hp_prompts: int = 0  # validation prompts; 0 = all 186 (541 replies)
    hp_max_reply_tokens: int = 0  # score the first N tokens of each reply; 0 = the whole reply
    mt_bench_questions: int = 80  # MT-Bench questions (both turns), categories evenly; 0 = no MT-Bench
    bootstrap_samples: int = 1000
    # IFEval (evaluation.instruments.ifeval): instructions a program checks. Prompts answered by every model
    # (M0 too): a seeded sample of the 541, 0 = all, -1 = no IFEval; greedy answers, as the field reports them,
    # of at most ifeval_max_new_tokens (a prompt asking for 300+ words needs about 500)
    ifeval_prompts: int = field(default=0, metadata=WHEN_SET)
    ifeval_max_new_tokens: int = field(default=512, metadata=WHEN_SET)
    ifeval_temperature: float = field(default=0.0, metadata=WHEN_SET)
    # M0 answers too, as the floor; a run with several seeds has it answer in the first seed's chain only (M0's
    # greedy answers are the same in every chain)
    ifeval_floor: bool = field(default=True, metadata=WHEN_SET)
    # the evaluation prompts answered and read (responses, head to head, the reference comparison, lengths,
    # MT-Bench) in every seed's chain, in the first seed's only (where their judge is known to be blind: the
    # book needs one chain to show it), or not at all
    answers: Literal["every_seed", "first_seed", "off"] = field(default="every_seed", metadata=PLAN_ONLY)

    def validate(self, key):
        _positive(self, key, "max_new_tokens", "rm_samples", "bootstrap_samples")
        for name in ("rm_prompts", "rm_max_reply_chars", "hp_prompts", "hp_max_reply_tokens", "mt_bench_questions"):
            _check(getattr(self, name) >= 0, f"{key}.{name}", "must be >= 0")
        _check(self.ifeval_prompts >= -1, f"{key}.ifeval_prompts", "must be >= 0 (0 = all), or -1 for no IFEval")
        _positive(self, key, "ifeval_max_new_tokens")
        _check(self.ifeval_temperature >= 0, f"{key}.ifeval_temperature", "must be >= 0")
        _check(self.reward_tie_tolerance >= 0, f"{key}.reward_tie_tolerance", "must be >= 0")
        _sampling(self, key)
        # a key pasted where the variable's name belongs is refused before it is written anywhere (no echo)
        _check(re.fullmatch(r"[A-Z_][A-Z0-9_]{0,63}", self.endpoint_api_key_env) is not None,
               f"{key}.endpoint_api_key_env", "must be the NAME of an environment variable (A-Z, 0-9, _), not "
               "the key itself; the value given was not written anywhere")
        if self.judge_model == "endpoint":
            _check(bool(self.endpoint_base_url and self.endpoint_model), f"{key}.judge_model",
                   "endpoint needs endpoint_base_url and endpoint_model")
            url = urllib.parse.urlsplit(self.endpoint_base_url)
            _check(url.scheme in ("https", "http") and bool(url.hostname), f"{key}.endpoint_base_url",
                   "expected an http(s) URL such as https://api.openai.com/v1")
            _check(url.scheme == "https" or self.endpoint_allow_http or is_loopback(url.hostname),
                   f"{key}.endpoint_base_url", "plain http:// would send the API key unencrypted to another "
                   "machine; use https://, or set endpoint_allow_http: true")


@dataclass
class LaunchConfig:
    """How training runs: in the stage's own process (1 process, no accelerate config), or as
    `accelerate launch -m selfreward.method.worker` over `num_processes` processes (DDP, or what the accelerate
    config file says: FSDP, DeepSpeed ZeRO-3). Generation and judging stay in the stage's process.
    Not part of any stage's fingerprint: at the same global batch, any number of processes trains the
    same model (tests/test_launch.py)."""
    num_processes: int = 1  # the world size: GPUs (or CPU processes, gloo) that train together
    accelerate_config: Optional[str] = None  # an accelerate config file (params/accelerate/*.yaml); relative
    # paths are relative to where selfreward runs, like --out
    gpu_memory_gb: float = 80.0  # per GPU, for `selfreward plan`: a profile that cannot fit is refused

    @property
    def multi_process(self) -> bool:
        return self.num_processes > 1 or self.accelerate_config is not None

    def validate(self, key):
        _positive(self, key, "num_processes", "gpu_memory_gb")
        if self.accelerate_config is not None:
            load_accelerate_config(self.accelerate_config, f"{key}.accelerate_config")


def load_accelerate_config(path: str, key: str = "launch.accelerate_config"):
    """An accelerate config file read by accelerate's own loader (the one `accelerate launch` uses)."""
    from accelerate.commands.config.config_args import load_config_from_file

    _check(Path(path).is_file(), key, f"accelerate config file {path!r} not found")
    try:
        return load_config_from_file(path)
    except Exception as err:  # accelerate raises plain errors of several kinds on a bad file
        raise ConfigError(f"{key}: {path} is not a valid accelerate config ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    # seeds as a dimension of the run: the chain (training order, dropout, EFT judgments, prompts, candidates,
    # evaluation sampling) trained once per seed, the data split and the evaluation items fixed (item_seed); the
    # first seed is the run's own (its folder), the others run in seeds/seed_<s>/. None: one chain, `seed`.
    seeds: Optional[list] = field(default=None, metadata=WHEN_SET)
    # the seed of what every chain shares (the data split, the evaluation items): a seed run's is its run's
    split_seed: Optional[int] = field(default=None, metadata=WHEN_SET)
    iterations: int = 2  # self-rewarding iterations: M2 = DPO(M1, AIFT(M1)), M3 = ...
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    eft: EFTConfig = field(default_factory=EFTConfig)
    self_instruct: SelfInstructConfig = field(default_factory=SelfInstructConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    aift: AIFTConfig = field(default_factory=AIFTConfig)
    sft: TrainConfig = field(default_factory=TrainConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)

    def validate(self):
        """Every section's own rules, then the rules that join sections."""
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate(f.name)
        _check(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name) is not None, "name",
               "must be one plain folder name (letters, digits, '.', '_', '-'; not starting with '.')")
        _check(self.iterations >= 0, "iterations", "must be >= 0")
        if self.seeds is not None:
            _check(isinstance(self.seeds, list) and all(isinstance(x, int) and not isinstance(x, bool)
                                                         for x in self.seeds), "seeds", "expected a list of integers")
            _check(bool(self.seeds), "seeds", "is empty (leave it out for one chain, or list at least one seed)")
            repeated = sorted({x for x in self.seeds if self.seeds.count(x) > 1})
            _check(not repeated, "seeds", f"seed {repeated[0] if repeated else ''} is listed twice")
            _check(self.seed in (0, self.seeds[0]), "seed", f"is {self.seed} but seeds starts with {self.seeds[0]}: "
                   "with seeds, the first is the run's own seed (leave seed out)")
        names = model_sequence(self.iterations)
        _check(model_reference_ok(self.self_instruct.prompt_model, ["base", "current"]),
               "self_instruct.prompt_model", f"unknown model {self.self_instruct.prompt_model!r} (expected base, "
               "current, or a model spec: a hub id owner/name, a local folder, embedded:..., tiny)")
        judge = self.evaluation.judge_model
        _check(model_reference_ok(judge.removeprefix("reward:"), [] if judge.startswith("reward:") else
                                  ["base", "endpoint"] + names), "evaluation.judge_model",
               f"unknown model {judge!r} (expected base, endpoint, {', '.join(names)}, a model spec, or "
               "reward:<a sequence-classification model's hub id or folder>)")
        rm_temperature = self.judge.temperature if self.evaluation.rm_temperature is None else self.evaluation.rm_temperature
        _check(rm_temperature >= 0, "evaluation.rm_temperature", "must be >= 0")
        _check(rm_temperature > 0 or self.evaluation.rm_samples == 1, "evaluation.rm_samples",
               f"must be 1 with a reward-model temperature of 0 (greedy decoding gives one judgment, not "
               f"{self.evaluation.rm_samples})")
        _check(self.generation.backend != "vllm" or self.model.finetune != "lora" or self.model.lora_r <= 512,
               "model.lora_r", "vLLM serves LoRA adapters of rank at most 512 (generation.backend: vllm)")
        self._check_variants()
        world = self.launch.num_processes
        for section in ("sft", "dpo"):
            train = getattr(self, section)
            _check(train.batch_size % (train.per_device_batch_size * world) == 0, f"{section}.batch_size",
                   f"must be a multiple of per_device_batch_size x launch.num_processes "
                   f"({train.per_device_batch_size} x {world})")
            # the lean trainers call the model's decoder and head directly, past a DDP/FSDP wrapper
            _check(not (self.launch.multi_process and train.logprobs == "selected"), f"{section}.logprobs",
                   "selected runs in one process only; with launch.num_processes > 1 or an accelerate config "
                   "set logprobs: trl")

    @property
    def chain_seeds(self) -> list[int]:
        """The seeds the run trains a chain with: `seeds`, or `seed` alone."""
        return list(self.seeds) if self.seeds else [self.seed]

    @property
    def item_seed(self) -> int:
        """The seed of what every chain of a run shares: the data split and the evaluation items."""
        return self.split_seed if self.split_seed is not None else self.chain_seeds[0]

    def first_seed_only(self) -> dict:
        """What a later seed's chain leaves to the first seed's, as overrides: M0's IFEval answers (the same in
        every chain), the ablation's variants (one chain's ablation: the seeds replicate the recipe, not each
        fix), and with `evaluation.answers: first_seed` the evaluation prompts' answers and their readings."""
        return {"evaluation.ifeval_floor": False, "ablation.variants": {},
                **({"evaluation.answers": "off"} if self.evaluation.answers == "first_seed" else {})}

    def for_seed(self, seed: int) -> "Config":
        """The config of one seed's chain in a run with several: its own seed, the run's items, and without
        what only the first seed's chain measures (`first_seed_only`)."""
        answers = "off" if self.evaluation.answers == "first_seed" else self.evaluation.answers
        return dataclasses.replace(self, name=f"seed_{seed}", seed=seed, seeds=None, split_seed=self.item_seed,
                                   evaluation=dataclasses.replace(self.evaluation, ifeval_floor=False,
                                                                  answers=answers),
                                   ablation=dataclasses.replace(self.ablation, variants={}))

    def ablation_variants(self) -> list[tuple[str, "AIFTConfig", int]]:
        """The ablation's variants: (name, its aift section, the iteration t it starts from, from M_t)."""
        found = []
        for name, overrides in self.ablation.variants.items():
            overrides = dict(overrides)
            start = overrides.pop("start", self.ablation.start)
            section = build(AIFTConfig, {**plain_section(self.aift), **overrides}, f"ablation.variants.{name}")
            found.append((name, section, int(start[1:]) if re.fullmatch(r"m\d+", str(start)) else 0))
        return found

    def _check_variants(self):
        """Each ablation variant starts from a model with an iteration from it, and its section's own rules
        hold. (What each small-model fix needs of the rest of the config is the fix's own rule:
        `method.fixes.check`.)"""
        for name, section, t in self.ablation_variants():
            key = f"ablation.variants.{name}"
            _check(1 <= t <= self.iterations, f"{key}.start", f"must be a model with an iteration from it: "
                   f"{', '.join(f'm{i}' for i in range(1, self.iterations + 1))}")
            section.validate(key)

    def to_dict(self) -> dict:
        """Plain values, every section as it is written in a params file (options kept flat)."""
        return {f.name: plain_section(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def section_hash(self, *sections: str) -> str:
        """A short fingerprint of the named sections, for skipping unchanged stages."""
        blob = json.dumps({s: _plain(getattr(self, s)) for s in sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def model_sequence(iterations: int) -> list[str]:
    """The model sequence of a run: SFT baseline, M1, then M2 ... M_{iterations+1}."""
    return ["sft_baseline", "m1"] + [f"m{t + 1}" for t in range(1, iterations + 1)]


# what selfreward sets from its own params (training._common_args and the trainers), and where to set it
MANAGED_TRAINER_ARGS = {
    "learning_rate": "learning_rate", "lr_scheduler_type": "min_learning_rate", "lr_scheduler_kwargs":
    "min_learning_rate", "per_device_train_batch_size": "per_device_batch_size", "gradient_accumulation_steps":
    "batch_size", "num_train_epochs": "epochs", "max_steps": "max_steps", "max_length": "max_length",
    "warmup_steps": "warmup_ratio", "warmup_ratio": "warmup_ratio", "seed": "seed (top level)", "report_to": "report_to", "beta": "beta",
    "bf16": "model.dtype", "fp16": "model.dtype", "use_cpu": "model.device", "output_dir": None,
    "logging_steps": None, "save_strategy": None, "completion_only_loss": None, "packing": None,
    "disable_dropout": "dropout", "precompute_ref_log_probs": None, "gradient_checkpointing": "recompute",
}


def _check_trainer_args(args: dict, trl_config: str, key: str):
    """Every key a field of TRL's config, none of those selfreward sets from its own params."""
    import trl  # only when there is something to check: importing TRL takes seconds

    fields = {f.name for f in dataclasses.fields(getattr(trl, trl_config))}
    for name in args:
        _check(isinstance(name, str) and name in fields, f"{key}.trainer_args.{name}",
               f"not a field of TRL's {trl_config}")
        if name in MANAGED_TRAINER_ARGS:
            where = MANAGED_TRAINER_ARGS[name]
            hint = "" if where is None else f" from {where if '.' in where or ' ' in where else f'{key}.{where}'}"
            raise ConfigError(f"{key}.trainer_args.{name}: set by selfreward{hint}; it cannot be passed through")


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def model_reference_ok(value: str, names: list[str]) -> bool:
    """A run-relative name, or something that looks like a model spec (checked again when loaded)."""
    return (value in names or value == "tiny" or value.startswith("embedded:") or "/" in value
            or Path(value).expanduser().exists())


def plain_section(value):
    """A section as plain values, as a params file writes it: options a section keeps aside (a field with
    metadata `rest`, such as the small-model fixes' options of `aift`) flat beside its fields."""
    if not dataclasses.is_dataclass(value):
        return value
    plain = {}
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if f.metadata.get("rest"):
            plain.update(item)
        else:
            plain[f.name] = plain_section(item) if dataclasses.is_dataclass(item) else copy.deepcopy(item)
    return plain


def _plain(value):
    """A section as plain values for its fingerprint. An option added after runs exist (metadata WHEN_SET)
    counts only when it differs from its default, so that adding one (at the paper's behaviour) keeps the
    stages of every earlier run; an option that only decides which stages exist (PLAN_ONLY) never counts."""
    if not dataclasses.is_dataclass(value):
        return value
    plain = plain_section(value)
    for f in dataclasses.fields(value):
        if f.metadata.get("fingerprint") == "never" or \
                (f.metadata.get("fingerprint") == "when set" and getattr(value, f.name) == f.default):
            del plain[f.name]
    return plain


def _check(ok: bool, key: str, message: str):
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _positive(section, key, *names):
    for name in names:
        _check(getattr(section, name) > 0, f"{key}.{name}", "must be > 0")


def _sampling(section, key):
    _check(section.temperature >= 0, f"{key}.temperature", "must be >= 0")
    _check(0 < section.top_p <= 1, f"{key}.top_p", "must be in (0, 1]")


# ---------------------------------------------------------------- building from plain values

def coerce(value, hint, key):
    """Check one YAML value against a field's type hint; ints are accepted where floats are."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else coerce(value, args[0], key)
    if origin is Literal:
        choices = typing.get_args(hint)
        _check(value in choices, key, f"expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"expected a number, got {value!r}")
        _check(math.isfinite(value), key, f"expected a finite number, got {value!r}")
        return float(value)
    if hint is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if hint is bool:
        _check(isinstance(value, bool), key, f"expected true or false, got {value!r}")
        return value
    if hint is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    if hint is list:
        _check(isinstance(value, list), key, f"expected a list, got {value!r}")
        return value
    if hint is dict:
        value = {} if value is None else value
        _check(isinstance(value, dict) and all(isinstance(k, str) for k in value), key,
               f"expected a mapping of names to values, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {hint}")


def build(cls, data, prefix: str = ""):
    """A dataclass of the schema from a mapping, each value checked against its type; not yet validated."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    rest = next((f.name for f in dataclasses.fields(cls) if f.metadata.get("rest")), None)
    names = {f.name for f in dataclasses.fields(cls)} - {rest}
    kwargs = {rest: {}} if rest else {}
    for key in data:
        if key not in names and rest is None:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in names:  # an option the section keeps aside, checked by whoever declares it
            _check(isinstance(key, str), where, "expected a name")
            kwargs[rest][key] = value
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build(hint, value if value is not None else {}, where)
        else:
            kwargs[key] = coerce(value, hint, where)
    return cls(**kwargs)
