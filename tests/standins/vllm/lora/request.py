"""vLLM 0.33's LoRARequest, as the stand-in engine needs it."""
from dataclasses import dataclass


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""

    def __post_init__(self):
        if self.lora_int_id < 1:
            raise ValueError("lora_int_id must be > 0")
        assert self.lora_path, "lora_path cannot be empty"
