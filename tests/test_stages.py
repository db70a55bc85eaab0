import shutil

import torch

from conftest import REPO
from selfreward.config import load_config
from selfreward.models import load_model
from selfreward.rundir import RunDir
from selfreward.method.loop import train_next_model
from selfreward.run.stages import plan


def test_the_positive_only_variant_adds_the_positives_to_the_sft_data(tiny_model_dir, tmp_path, monkeypatch):
    """As the paper: the candidates scored 5 join the seed SFT data (IFT + EFT), trained from M0."""
    from selfreward.io import write_jsonl
    from selfreward.method import training

    cfg = load_config(REPO / "params" / "tiny.yaml", ["aift.objective=sft_positive", "sft.max_steps=2",
                                                        "sft.batch_size=2", "sft.per_device_batch_size=2",
                                                        f"model.spec={tiny_model_dir}"])
    run = RunDir(tmp_path / "run")
    ift = [{"prompt": "What is the capital of France?", "response": "Paris."}] * 3
    eft = [{"prompt": "Review the response ...", "response": "Relevant.\nScore: 4", "score": 4}] * 2
    write_jsonl(run.ift, ift)
    write_jsonl(run.eft_train, eft)
    shutil.copytree(tiny_model_dir, run.model("m1"))
    calls, real = [], training.sft
    monkeypatch.setattr(training, "sft", lambda start, out, rows, *a, **k: calls.append((start, rows)) or
                        real(start, out, rows, *a, **k))
    positives = [{"prompt": "Name a prime number.", "response": "Seven is a prime number.", "score": 5.0}] * 4
    summary = train_next_model(cfg, run, 1, pairs=[], positives=positives, seed=0)
    (start, rows), = calls
    assert start == tiny_model_dir and rows == ift + eft + positives  # from M0, on seed data and positives
    assert summary["steps"] == 2 and summary["examples_trained"] == 9 and summary["positive_examples_trained"] == 4
    before, after = load_model(tiny_model_dir, "float32", "cpu"), load_model(str(run.model("m2")), "float32", "cpu")
    assert any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values(), strict=True))


def test_iteration_stages_read_the_aift_and_training_sections():
    stages = {s.name: s for s in plan(load_config(REPO / "params" / "tiny.yaml"))}
    assert {"aift", "dpo", "sft", "judge", "candidates"} <= set(stages["iteration_1"].sections)
    assert stages["iteration_2"].needs == ("data", "iteration_1")
    assert stages["results"].report and "reward_model" in stages["results"].needs
