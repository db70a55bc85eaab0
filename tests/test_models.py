import pytest
import torch

from selfreward import models


@pytest.mark.parametrize("requested,device,cuda_bf16,cpu_bf16,expected", [
    ("auto", "cpu", False, False, "float32"),  # AVX2 only: bf16 would be 5x slower
    ("auto", "cpu", False, True, "bfloat16"),  # AVX512-BF16 / AMX
    ("auto", "cuda", True, False, "bfloat16"),
    ("auto", "cuda:1", True, False, "bfloat16"),
    ("auto", "cuda", False, True, "float32"),  # an old GPU: the CPU's bf16 does not matter
    ("auto", "mps", False, True, "float32"),
    ("bfloat16", "cpu", False, False, "bfloat16"),  # an explicit choice is kept
    ("float16", "cuda", True, True, "float16"),
])
def test_dtype_rule(requested, device, cuda_bf16, cpu_bf16, expected):
    assert models.choose_dtype(requested, device, cuda_bf16, cpu_bf16) == expected


def test_resolved_dtype_and_hardware_of_this_machine():
    facts = models.hardware("cpu")
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and facts["threads"] >= 1
    expected = "bfloat16" if facts["cpu_native_bf16"] else "float32"
    assert models.resolve_dtype("auto", "cpu") == expected
    assert models.resolve_dtype("float32", "cpu") == "float32"


def test_load_model_resolves_auto(tiny_model_dir):
    model = models.load_model(tiny_model_dir, "auto", "cpu")
    assert model.dtype == models.DTYPES[models.resolve_dtype("auto", "cpu")]
