import subprocess
import sys

import pytest

from selfreward.config import ConfigError, apply_overrides, from_dict, load_config
from conftest import REPO


@pytest.mark.parametrize("name", ["tiny", "cpu-small", "cpu-study", "gpu-8b", "paper"])
def test_profiles_load(name):
    cfg = load_config(REPO / "params" / f"{name}.yaml")
    assert cfg.name == name and cfg.candidates.n >= 2


def test_paper_profile_has_the_papers_numbers():
    cfg = load_config(REPO / "params" / "paper.yaml")
    assert (cfg.data.ift_size, cfg.data.eft_source_size, cfg.judge.samples, cfg.candidates.n) == (3200, 1630, 3, 4)
    assert (cfg.sft.learning_rate, cfg.sft.min_learning_rate, cfg.dpo.beta) == (5.5e-6, 1.1e-6, 0.1)
    assert cfg.candidates.temperature == 0.7 and cfg.self_instruct.temperature == 0.6


@pytest.mark.parametrize("yaml_text,message", [
    ("sft:\n  lr: 1\n", "p.yaml: sft.lr: unknown key"),
    ("colour: red\n", "p.yaml: colour: unknown key"),
    ("sft:\n  learning_rate: fast\n", "p.yaml: sft.learning_rate: expected a number"),
    ("candidates:\n  n: 1\n", "p.yaml: candidates.n: must be >= 2"),
    ("judge:\n  mode: vibes\n", "p.yaml: judge.mode: expected one of sampled, constrained"),
    ("judge:\n  samples: 2.5\n", "p.yaml: judge.samples: expected an integer"),
    ("sft:\n  batch_size: 6\n  per_device_batch_size: 4\n", "p.yaml: sft.batch_size: must be a multiple"),
    ("candidates:\n  top_p: 1.5\n", "p.yaml: candidates.top_p: must be in (0, 1]"),
    ("sft: [1, 2]\n", "p.yaml: sft: expected a mapping"),
    ("sft:\n  learning_rate: [\n", "p.yaml: not valid YAML"),
    ("- a\n- b\n", "p.yaml: expected a mapping of sections"),
])
def test_bad_params_give_one_line_errors(tmp_path, yaml_text, message):
    path = tmp_path / "p.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "\n" not in text and message in text.replace(str(tmp_path) + "/", "")


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_parse_values_and_reach_nested_keys(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nsft:\n  epochs: 2\n")
    cfg = load_config(path, ["sft.learning_rate=1e-5", "judge.mode=constrained", "iterations=3", "name=y"])
    assert cfg.sft.learning_rate == 1e-5 and cfg.sft.epochs == 2.0
    assert cfg.judge.mode == "constrained" and cfg.iterations == 3 and cfg.name == "y"
    with pytest.raises(ConfigError, match="sft.bogus: unknown key"):
        load_config(path, ["sft.bogus=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["sft.learning_rate"])


def test_section_hash_tracks_only_its_sections():
    a, b = from_dict({}), from_dict({"dpo": {"beta": 0.2}})
    assert a.section_hash("sft", "model") == b.section_hash("sft", "model")
    assert a.section_hash("dpo") != b.section_hash("dpo")


def test_cli_reports_bad_params_in_one_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("sft:\n  lr: 1\n")
    result = subprocess.run([sys.executable, "-m", "selfreward.cli", "run", str(path), "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "sft.lr: unknown key" in result.stderr
    assert not (tmp_path / "run").exists()  # nothing written for a rejected config


def test_trainer_args_pass_through_to_trl_and_unknown_or_managed_names_are_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("sft:\n  trainer_args:\n    weight_decay: 0.1\n    max_grad_norm: 0.5\n  report_to: tensorboard\n")
    cfg = load_config(path)
    assert cfg.sft.trainer_args == {"weight_decay": 0.1, "max_grad_norm": 0.5} and cfg.sft.report_to == "tensorboard"
    for text, message in [("sft:\n  trainer_args:\n    wieght_decay: 0.1\n",
                           "sft.trainer_args.wieght_decay: not a field of TRL's SFTConfig"),
                          ("dpo:\n  trainer_args:\n    learning_rate: 1.0\n",
                           "dpo.trainer_args.learning_rate: set by selfreward from dpo.learning_rate"),
                          ("dpo:\n  trainer_args:\n    rpo_alpha: 0.5\n  report_to: mlflow\n",
                           "dpo.report_to: expected one of none, tensorboard, wandb")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("'", ".")):
            load_config(path)


def test_trainer_args_reach_the_trainer(tiny_model_dir, tmp_path):
    from selfreward.config import ModelConfig, TrainConfig
    from selfreward.method.training import sft_trainer

    cfg = TrainConfig(batch_size=2, per_device_batch_size=2, max_length=64,
                      trainer_args={"weight_decay": 0.05, "max_grad_norm": 0.25})
    trainer = sft_trainer(tiny_model_dir, [{"prompt": "a", "response": "b"}] * 2, cfg,
                          ModelConfig(spec="tiny", dtype="float32", finetune="full", device="cpu"), str(tmp_path))
    assert trainer.args.weight_decay == 0.05 and trainer.args.max_grad_norm == 0.25


def test_sections_are_built_then_validated_once(monkeypatch):
    from selfreward.config import JudgeConfig, build, schema

    judge = build(JudgeConfig, {"samples": 0}, "judge")  # built by type only: the rules run once, at the end
    assert judge.samples == 0
    calls = []
    original = schema.JudgeConfig.validate
    monkeypatch.setattr(schema.JudgeConfig, "validate", lambda self, key: calls.append(key) or original(self, key))
    from_dict({"judge": {"samples": 2}})
    assert calls == ["judge"]
    with pytest.raises(ConfigError, match=r"judge\.samples: must be > 0"):
        from_dict({"judge": {"samples": 0}})


def test_the_schema_names_exactly_the_judge_templates():
    import typing

    from selfreward.config import JudgeConfig
    from selfreward.method.prompts import JUDGE_TEMPLATES

    assert set(typing.get_args(typing.get_type_hints(JudgeConfig)["prompt"])) == set(JUDGE_TEMPLATES)
    with pytest.raises(ConfigError, match=r"judge\.prompt: expected one of additive, multiple_choice, got 'fancy'"):
        from_dict({"judge": {"prompt": "fancy"}})


def test_the_paper_profile_is_the_paper():
    """params/paper.yaml sets every hyper-parameter and protocol value of `selfreward.paper` as the paper does."""
    from selfreward import paper

    cfg = load_config(REPO / "params" / "paper.yaml").to_dict()
    assert {key: paper.value(cfg, key) for key in paper.CONFIG} == paper.CONFIG
    rows = {aspect: same for aspect, _, _, same in paper.deviations(cfg, lambda stage, key: None)}
    for aspect in ("pretrained model M0", "fine-tuning", "DPO learning rate", "SFT learning rate",
                   "candidates per prompt (N)", "checkpoint selection", "evaluation judge"):
        assert rows[aspect], aspect


def test_the_deviations_of_the_8b_profile_name_what_differs():
    """gpt-4o is not GPT-4, LoRA rates are not the paper's, 8B is not 70B: the deviations table says each."""
    from selfreward import paper

    cfg = load_config(REPO / "params" / "gpu-8b.yaml").to_dict()
    rows = {aspect: (ours, same) for aspect, _, ours, same in paper.deviations(cfg, lambda stage, key: None)}
    assert rows["pretrained model M0"] == ("meta-llama/Llama-3.1-8B", False)
    assert rows["fine-tuning"][0].startswith("LoRA (r 64") and not rows["fine-tuning"][1]
    assert rows["SFT learning rate"] == ("0.0002, cosine decay to 4e-05", False)
    assert rows["DPO learning rate"] == ("5e-06, decaying to 5e-07", False)
    # a local reward model by default (no API key); GPT-4o one --set away
    assert rows["evaluation judge"] == ("reward model Skywork/Skywork-Reward-V2-Llama-3.1-8B (scores each answer "
                                        "alone; no MT-Bench)", False)
    endpoint = load_config(REPO / "params" / "gpu-8b.yaml", ["evaluation.judge_model=endpoint"]).to_dict()
    rows = {aspect: (ours, same) for aspect, _, ours, same in paper.deviations(endpoint, lambda stage, key: None)}
    assert rows["evaluation judge"] == ("endpoint gpt-4o-2024-08-06", False)


def test_a_profile_extends_another_and_holds_only_its_own_lines(tmp_path):
    """`extends:` names the profile a params file builds on: mappings merge key by key, values are replaced; the
    shipped ablation profile is the study's params plus its own name and ablation section."""
    (tmp_path / "base.yaml").write_text("name: base\nsft:\n  learning_rate: 1.0e-4\n  epochs: 2\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nsft:\n  epochs: 3\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.name, cfg.sft.learning_rate, cfg.sft.epochs) == ("base", 1e-4, 3)
    study, ablation = (load_config(REPO / "params" / f"{n}.yaml").to_dict() for n in ("cpu-study", "cpu-ablation"))
    assert {k: v for k, v in ablation.items() if k not in ("name", "ablation", "seeds")} == \
        {k: v for k, v in study.items() if k not in ("name", "ablation", "seeds")}
    assert ablation["seeds"] == study["seeds"][:1]  # the ablation trains in the study's first seed's chain
    assert len((REPO / "params" / "cpu-ablation.yaml").read_text().splitlines()) < 40
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a.yaml: extends itself \(through a.yaml -> b.yaml\)"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml: params file not found"):
        load_config(tmp_path / "orphan.yaml")
    with pytest.raises(ConfigError, match=r": is a folder, not a params file$"):
        load_config(tmp_path)
