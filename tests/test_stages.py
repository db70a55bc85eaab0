import shutil

import torch

from conftest import REPO
from selfreward.config import load_config
from selfreward.models import load_model
from selfreward.rundir import RunDir
from selfreward.method.loop import train_next_model
from selfreward.run.stages import plan


def test_the_positive_only_variant_trains_the_next_model_by_sft_on_positives(tiny_model_dir, tmp_path):
    cfg = load_config(REPO / "params" / "tiny.yaml", ["aift.objective=sft_positive", "sft.max_steps=2",
                                                        "sft.batch_size=2", "sft.per_device_batch_size=2"])
    run = RunDir(tmp_path / "run")
    shutil.copytree(tiny_model_dir, run.model("m1"))
    positives = [{"prompt": "Name a prime number.", "response": "Seven is a prime number.", "score": 5.0}] * 4
    summary = train_next_model(cfg, run, 1, pairs=[], positives=positives, seed=0)
    assert summary["steps"] == 2 and summary["examples_trained"] == 4
    before, after = load_model(tiny_model_dir, "float32", "cpu"), load_model(str(run.model("m2")), "float32", "cpu")
    assert any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))


def test_iteration_stages_read_the_aift_and_training_sections():
    stages = {s.name: s for s in plan(load_config(REPO / "params" / "tiny.yaml"))}
    assert {"aift", "dpo", "sft", "judge", "candidates"} <= set(stages["iteration_1"].sections)
    assert stages["iteration_2"].needs == ("data", "iteration_1")
    assert stages["results"].report and "reward_model" in stages["results"].needs
