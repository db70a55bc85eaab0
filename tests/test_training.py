import json

import pytest
import torch

from selfreward.config import DPOConfig, ModelConfig, TrainConfig
from selfreward.models import load_model, load_tokenizer
from selfreward.method.lean import FastDropout, SelectedLogProbs, dpo_loss, token_logprobs, use_fast_dropout
from selfreward.method.training import SimilarLengthSampler, TrainingError, dpo, dpo_trainer, sft, sft_trainer

MODEL = ModelConfig(spec="tiny", dtype="float32", finetune="full", device="cpu")
EXAMPLES = [{"prompt": "What is the capital of France?", "response": "Paris."},
            {"prompt": "Name a prime number.", "response": "Seven."}] * 4


def _weights(path):
    return {k: v.clone() for k, v in load_model(path, "float32", "cpu").state_dict().items()}


def test_sft_trains_and_saves_a_plain_checkpoint(tiny_model_dir, tmp_path):
    cfg = TrainConfig(learning_rate=1e-2, min_learning_rate=1e-3, batch_size=4, per_device_batch_size=2,
                      max_steps=3, max_length=128)
    summary = sft(tiny_model_dir, tmp_path / "sft", EXAMPLES, cfg, MODEL, seed=0)
    assert summary["steps"] == 3 and summary["examples_trained"] == len(EXAMPLES)
    assert summary["final_loss"] < summary["first_loss"]
    before, after = _weights(tiny_model_dir), _weights(str(tmp_path / "sft"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    log = json.loads((tmp_path / "sft" / "trainer_state.json").read_text())
    lrs = [h["learning_rate"] for h in log["log_history"] if "learning_rate" in h]
    assert lrs[0] > lrs[-1] >= cfg.min_learning_rate  # cosine decay to the floor


def test_lora_sft_merges_adapters(tiny_model_dir, tmp_path):
    lora = ModelConfig(spec="tiny", dtype="float32", finetune="lora", lora_r=4, lora_alpha=8, device="cpu")
    cfg = TrainConfig(learning_rate=1e-2, min_learning_rate=1e-3, batch_size=2, per_device_batch_size=2,
                      max_steps=2, max_length=128)
    sft(tiny_model_dir, tmp_path / "lora", EXAMPLES, cfg, lora, seed=0)
    files = {p.name for p in (tmp_path / "lora").iterdir()}
    assert "adapter_config.json" not in files and "config.json" in files
    assert set(_weights(str(tmp_path / "lora"))) == set(_weights(tiny_model_dir))


def test_dpo_trains_from_pairs(tiny_model_dir, tmp_path):
    pairs = [{"prompt": "Name a prime number.", "chosen": "Seven.", "rejected": "Eight."}] * 4
    cfg = DPOConfig(learning_rate=1e-2, min_learning_rate=1e-3, batch_size=2, per_device_batch_size=2,
                    max_steps=2, max_length=128)
    summary = dpo(tiny_model_dir, tmp_path / "dpo", pairs, cfg, MODEL, seed=0)
    assert summary["steps"] == 2 and summary["first_loss"] == pytest.approx(0.693, abs=0.01)  # log(2) at start
    assert (tmp_path / "dpo" / "config.json").is_file()


def test_training_without_examples_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(TrainingError, match="no training examples"):
        sft(tiny_model_dir, tmp_path / "x", [], TrainConfig(), MODEL)
    with pytest.raises(TrainingError, match="no preference pairs"):
        dpo(tiny_model_dir, tmp_path / "x", [], DPOConfig(), MODEL)
    assert not (tmp_path / "x").exists()


def test_sft_loss_covers_response_tokens_only(tiny_model_dir, tmp_path):
    trainer = sft_trainer(tiny_model_dir, EXAMPLES[:1], TrainConfig(max_length=128), MODEL, str(tmp_path))
    row = trainer.train_dataset[0]
    tokenizer = trainer.processing_class
    ids = row["input_ids"]
    mask = [label != -100 for label in row["labels"]]  # -100 = ignored by the loss
    trained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == "Paris.<end_of_turn><eos>"  # the response, its end of turn and EOS
    assert "capital of France" in tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if not m])


def _batch(tokenizer, texts, prompt_chars):
    """Right-padded token ids with labels on everything after the first `prompt_chars` characters."""
    encoded = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right")
    labels = encoded.input_ids.clone()
    for row, (text, chars) in enumerate(zip(texts, prompt_chars, strict=True)):
        labels[row, :len(tokenizer(text[:chars]).input_ids)] = -100
    labels[encoded.attention_mask == 0] = -100
    return encoded.input_ids, encoded.attention_mask, labels


@pytest.mark.parametrize("recompute", [False, True])
def test_token_logprobs_equal_the_full_forward_and_its_gradients(tiny_model_dir, recompute, monkeypatch):
    model = load_model(tiny_model_dir, "float32", "cpu")
    tokenizer = load_tokenizer(tiny_model_dir)
    texts = ["What is the capital of France? Paris.", "Name a prime number. Seven, or any other prime."]
    input_ids, mask, labels = _batch(tokenizer, texts, [30, 20])

    expected = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].log_softmax(-1)
    targets = labels[:, 1:]
    expected = expected.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * (targets != -100)
    expected.sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    monkeypatch.setattr(SelectedLogProbs, "CHUNK", 5)  # several chunks on a short batch
    logps, positions = token_logprobs(model, input_ids, mask, labels, recompute=recompute)
    assert torch.equal(positions, targets != -100) and 0 < positions.sum() < positions.numel()
    torch.testing.assert_close(logps, expected, rtol=1e-5, atol=1e-5)
    logps.sum().backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def _first_batch_loss(trainer, nudge: bool):
    trainer.model.eval()  # no dropout: both losses see the same network
    if nudge:  # move the policy away from the reference, or DPO's loss is log 2 whatever the log-probs
        torch.manual_seed(0)
        with torch.no_grad():
            for parameter in trainer.model.parameters():
                if parameter.requires_grad:  # under LoRA only the adapters, so the reference stays the base
                    parameter.add_(torch.randn_like(parameter) * 0.05)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


@pytest.mark.parametrize("kind,finetune", [("sft", "full"), ("dpo", "full"), ("dpo", "lora")])
def test_lean_losses_equal_trls(tiny_model_dir, tmp_path, kind, finetune):
    model_cfg = ModelConfig(spec="tiny", dtype="float32", finetune=finetune, lora_r=4, lora_alpha=8, device="cpu")
    pairs = [{"prompt": "Name a prime number.", "chosen": "Seven.", "rejected": "Eight, which is even."}] * 2
    losses = {}
    for logprobs in ["selected", "trl"]:
        if kind == "sft":
            cfg = TrainConfig(batch_size=2, per_device_batch_size=2, max_length=128, dropout=0.0, logprobs=logprobs)
            trainer = sft_trainer(tiny_model_dir, EXAMPLES, cfg, model_cfg, str(tmp_path))
        else:
            cfg = DPOConfig(batch_size=2, per_device_batch_size=2, max_length=128, dropout=0.0, logprobs=logprobs)
            trainer = dpo_trainer(tiny_model_dir, pairs, cfg, model_cfg, str(tmp_path))
        losses[logprobs] = _first_batch_loss(trainer, nudge=kind == "dpo")
    assert losses["selected"] == pytest.approx(losses["trl"], rel=1e-4)
    if kind == "dpo":
        assert abs(losses["trl"] - 0.6931) > 1e-3  # the nudge made the comparison meaningful


@pytest.mark.parametrize("cap,recompute,trains_head", [(None, False, True), (5.0, False, True), (5.0, True, True),
                                                       (None, False, False), (5.0, True, False)])
def test_selected_logprobs_gradients_equal_autograds(cap, recompute, trains_head, monkeypatch):
    """Values and gradients as autograd's, for any upstream gradient: with a trained head (logits kept, or formed
    again), and with a frozen one (LoRA), whose gradient rows are formed in the forward."""
    monkeypatch.setattr(SelectedLogProbs, "CHUNK", 3)
    torch.manual_seed(0)
    hidden, weight = torch.randn(7, 8, dtype=torch.float64), torch.randn(50, 8, dtype=torch.float64)
    targets, upstream = torch.randint(0, 50, (7,)), torch.randn(7, dtype=torch.float64)

    def reference(h, w):
        logits = h @ w.T
        logits = torch.tanh(logits / cap) * cap if cap else logits
        return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)

    grads = []
    for function in (reference, lambda h, w: SelectedLogProbs.apply(h, w, targets, cap, recompute)):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_(trains_head)
        values = function(h, w)
        (values.double() * upstream).sum().backward()
        grads.append((values.double().detach(), h.grad, w.grad))
    for expected, ours in zip(*grads, strict=True):
        torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("trains_head,recompute", [(False, True), (True, True), (True, False)])
def test_the_head_never_keeps_vocabulary_sized_tensors_for_the_backward_unless_asked(trains_head, recompute):
    """What the output layer saves for its backward, counted by autograd's hooks, is what `head_bytes` says:
    [positions, hidden] gradient rows for a frozen head, nothing of vocabulary size when it trains with
    `recompute`, its logits only when asked not to recompute."""
    from selfreward.method.budget import head_bytes

    positions, vocab, width = 300, 4096, 16
    hidden = torch.randn(positions, width, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(vocab, width, dtype=torch.bfloat16, requires_grad=trains_head)
    targets = torch.randint(0, vocab, (positions,))
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        values = SelectedLogProbs.apply(hidden, weight, targets, None, recompute)
    values.sum().backward()
    rule = head_bytes(positions, vocab, width, 2, trains_head, recompute)
    vocabulary_sized = [b for b in saved if b >= positions * vocab]
    assert vocabulary_sized == ([] if recompute or not trains_head else [positions * vocab * 2])
    kept = sum(saved) - (0 if not trains_head else positions * width * 2 + vocab * width * 2 + positions * 12)
    assert kept == rule["kept_for_backward"], saved


def test_fast_dropout_has_dropouts_law_and_replaces_it():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.25), torch.nn.Sequential(torch.nn.Dropout(0.1)))
    use_fast_dropout(model)
    assert [type(m) for m in model.modules()].count(torch.nn.Dropout) == 0
    dropout = model[1]
    assert isinstance(dropout, FastDropout) and dropout.p == 0.25
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = dropout.train()(x)
    assert (y == 0).float().mean().item() == pytest.approx(0.25, abs=0.005)
    assert y.unique().tolist() == [0.0, pytest.approx(1 / 0.75)] and y.mean().item() == pytest.approx(1, abs=0.01)
    assert torch.equal(dropout.eval()(x), x)


def test_dpo_loss_by_hand():
    # two pairs: chosen rows first, then the rejected rows in the same order
    policy = torch.tensor([-1.0, -2.0, -3.0, -1.0])
    reference = torch.tensor([-2.0, -2.0, -2.0, -2.0])
    loss, rewards = dpo_loss(policy, reference, beta=0.5)
    # pair 1: chosen +1, rejected -1 -> margin 0.5 * 2 = 1; pair 2: chosen 0, rejected +1 -> margin -0.5
    assert rewards["rewards/margins"].tolist() == [1.0, -0.5]
    assert rewards["rewards/chosen"].tolist() == [0.5, 0.0] and rewards["rewards/rejected"].tolist() == [-0.5, 0.5]
    assert rewards["rewards/accuracies"].tolist() == [1.0, 0.0]
    expected = -(torch.nn.functional.logsigmoid(torch.tensor(1.0)) + torch.nn.functional.logsigmoid(torch.tensor(-0.5))) / 2
    assert loss.item() == pytest.approx(expected.item())
    same, _ = dpo_loss(reference, reference, beta=0.1)  # policy = reference: log 2, whatever the log-probs
    assert same.item() == pytest.approx(0.6931472)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_dpo_reference_is_a_deterministic_eval_mode_forward_of_the_starting_model(tiny_model_dir, tmp_path,
                                                                                 finetune):
    model_cfg = ModelConfig(spec="tiny", dtype="float32", finetune=finetune, lora_r=4, lora_alpha=8, device="cpu")
    pairs = [{"prompt": "Name a prime number.", "chosen": "Seven.", "rejected": "Eight, which is even."},
             {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Rome, I think."}]
    cfg = DPOConfig(batch_size=2, per_device_batch_size=2, max_length=128, dropout=0.1)
    trainer = dpo_trainer(tiny_model_dir, pairs, cfg, model_cfg, str(tmp_path))
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()  # as during training: dropout 0.1 in the policy
    first = torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))
    second = torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))
    assert torch.equal(first, second) and trainer.model.training  # no dropout noise; the mode is restored
    start = load_model(tiny_model_dir, "float32", "cpu").eval()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        expected = token_logprobs(start, batch["input_ids"], batch["attention_mask"], labels)[0].sum(-1)
    torch.testing.assert_close(first, expected)
    # precomputed before training, and what the loss uses: at step 1 (policy = reference) the margins are 0
    torch.testing.assert_close(torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]]), expected)
    trainer.model.eval()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    assert trainer._metrics["eval"]["rewards/margins"][-1] == pytest.approx(0.0, abs=1e-6)


def test_the_reference_cache_key_is_a_digest_of_the_weights_without_copies(tiny_model_dir, tmp_path):
    """`lean.weights_digest`: the same weights give the same digest (in every process of a launch, which share the
    cached reference log-probabilities by it), one changed value a different one; a lean DPO trainer is keyed by
    it and TRL's own `hash_module` is back in place once the trainer is built."""
    import sys

    from trl import DPOTrainer

    from selfreward.method.lean import weights_digest

    first, second = (load_model(tiny_model_dir, "bfloat16", "cpu") for _ in range(2))
    assert weights_digest(first) == weights_digest(second)
    with torch.no_grad():
        next(second.parameters()).view(-1)[0] += 1
    assert weights_digest(first) != weights_digest(second)
    trl_dpo = sys.modules[DPOTrainer.__module__]
    trl_hash = trl_dpo.hash_module
    model_cfg = ModelConfig(spec="tiny", dtype="float32", finetune="full", device="cpu")
    pairs = [{"prompt": "Name a prime number.", "chosen": "Seven.", "rejected": "Eight, which is even."}]
    trainer = dpo_trainer(tiny_model_dir, pairs, DPOConfig(batch_size=1, per_device_batch_size=1, max_length=64),
                          model_cfg, str(tmp_path))
    assert trainer._precompute_model_hash == weights_digest(trainer.ref_model or trainer.model)
    assert trl_dpo.hash_module is trl_hash


def test_similar_length_sampler_is_a_random_permutation_with_little_padding():
    lengths = torch.randint(10, 400, (96,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = SimilarLengthSampler(lengths, batch_size=4, seed=0)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(96)) and first != second  # each example once per epoch, a new order each epoch
    assert list(SimilarLengthSampler(lengths, 4, seed=0)) == first  # seeded

    def padded(order):
        return sum(4 * max(lengths[i] for i in order[b:b + 4]) for b in range(0, 96, 4))

    shuffled = torch.randperm(96, generator=torch.Generator().manual_seed(1)).tolist()
    assert padded(first) < 0.85 * padded(shuffled)
    assert first != sorted(first, key=lengths.__getitem__)  # not simply sorted by length


def test_warmup_is_a_share_of_the_steps_on_transformers_4_and_5(tiny_model_dir, tmp_path):
    from selfreward.method.training import warmup_arguments

    # transformers 4.x: warmup_steps is a whole number of steps, the share is warmup_ratio
    assert warmup_arguments(0.25, {"warmup_ratio", "warmup_steps"}) == {"warmup_ratio": 0.25}
    # transformers 5.x: no warmup_ratio; a warmup_steps below 1 is the share
    assert warmup_arguments(0.25, {"warmup_steps"}) == {"warmup_steps": 0.25}
    # on the installed transformers, a trainer really warms up over a quarter of its 8 steps
    train = TrainConfig(max_steps=8, batch_size=2, per_device_batch_size=2, max_length=64, warmup_ratio=0.25,
                        learning_rate=1e-3, min_learning_rate=1e-4)
    trainer = sft_trainer(tiny_model_dir, EXAMPLES, train, ModelConfig(spec="tiny", finetune="full", device="cpu",
                                                                       dtype="float32"), str(tmp_path), seed=0)
    trainer.create_optimizer_and_scheduler(num_training_steps=8)
    rates = []
    for _ in range(8):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert rates[0] == 0 and rates[1] == pytest.approx(5e-4) and rates[2] == pytest.approx(1e-3)
    assert rates[-1] < rates[2] and min(rates[2:]) >= 1e-4 - 1e-12  # cosine down to the floor, not below


def test_checkpoints_become_model_folders_on_the_cpu(tiny_model_dir, tmp_path):
    """Materialising a checkpoint never loads it onto a GPU: here the params ask for cuda on a machine that
    has none, and the LoRA merge and the full copy both work, on the CPU."""
    from peft import LoraConfig, get_peft_model

    from selfreward.method.training import materialize_checkpoint

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cuda = ModelConfig(spec="tiny", finetune="lora", device="cuda", dtype="float32")
    lora = get_peft_model(load_model(tiny_model_dir, "float32", "cpu"),
                          LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    materialize_checkpoint(str(tmp_path / "adapter"), tiny_model_dir, tmp_path / "merged", cuda)
    merged = load_model(str(tmp_path / "merged"), "float32", "cpu")
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight,
                           load_model(tiny_model_dir, "float32", "cpu").model.layers[0].self_attn.q_proj.weight)
    materialize_checkpoint(str(tmp_path / "merged"), tiny_model_dir, tmp_path / "copied", cuda)
    copied = load_model(str(tmp_path / "copied"), "float32", "cpu")
    assert all(torch.equal(a, b) for a, b in zip(merged.state_dict().values(), copied.state_dict().values(), strict=True))
    assert (tmp_path / "copied" / "tokenizer_config.json").is_file()
