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


def test_weight_major_linears_match_and_are_undone(tiny_model_dir, monkeypatch):
    model = models.load_model(tiny_model_dir, "float32", "cpu")
    taken, real = [], models.weight_major  # the rows of each product computed weight-major (the real function)

    def counted(weight, rows):
        out = real(weight, rows)
        if out is not None:
            taken.append(len(rows))
        return out

    monkeypatch.setattr(models, "weight_major", counted)
    torch.manual_seed(0)
    vocab = model.config.vocab_size
    few, many = torch.randint(5, vocab, (3, 1)), torch.randint(5, vocab, (3, 100))  # 3 rows; 300 rows (left alone)
    decoder = model.get_decoder()
    with torch.no_grad():
        before = [decoder(input_ids=ids).last_hidden_state for ids in (few, many)]
    with models.weight_major_linears(model):
        patched = [m for m in model.modules() if "forward" in m.__dict__]
        assert patched and all(isinstance(m, torch.nn.Linear) for m in patched)
        with torch.no_grad():
            inside = [decoder(input_ids=ids).last_hidden_state for ids in (few, many)]
        assert taken and set(taken) == {3}  # every product of the 3-row input, none of the 300-row one
        with_gradients = decoder(input_ids=few).last_hidden_state
    assert not any("forward" in m.__dict__ for m in model.modules())  # the class's forward again
    torch.testing.assert_close(inside[0], before[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(inside[1], before[1])  # larger inputs take the usual path
    assert torch.equal(with_gradients, before[0])  # and so do inputs that need gradients


def test_head_logits_in_vocabulary_blocks_match_the_layer(tiny_model_dir, monkeypatch):
    model = models.load_model(tiny_model_dir, "float32", "cpu")
    monkeypatch.setattr(models, "WEIGHT_MAJOR_BLOCK", 300)  # blocks that do not divide the vocabulary
    hidden = torch.randn(5, model.config.hidden_size)
    expected = model.get_output_embeddings()(hidden)
    with torch.no_grad():
        torch.testing.assert_close(models.head_logits(model, hidden), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(models.head_logits(model, hidden), expected)  # with gradients: the layer itself
