import json

import pytest
import torch

from selfreward.config import DPOConfig, ModelConfig, TrainConfig
from selfreward.models import load_model
from selfreward.training import TrainingError, dpo, sft, sft_trainer

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
    log = json.loads((tmp_path / "sft" / "train_log.json").read_text())
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
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "Paris.<end_of_turn><eos>"  # the response, its end of turn and EOS
    assert "capital of France" in tokenizer.decode([i for i, m in zip(ids, mask) if not m])
