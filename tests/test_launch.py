"""Training over several processes (accelerate launch, gloo on CPU) and the accelerate configs we ship."""
import json
from pathlib import Path

import pytest

from selfreward.method import training
from selfreward.method import launch as train
from selfreward.config import ConfigError, LaunchConfig, load_accelerate_config, load_config
from selfreward.method.launch import LaunchError

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "params" / "tiny.yaml")
EXAMPLES = [{"prompt": f"Question {i}: what is {i} plus {i}?", "response": f"It is {2 * i}." + " Indeed." * (i % 3)}
            for i in range(16)]
PAIRS = [{"prompt": e["prompt"], "chosen": e["response"], "rejected": "I do not know."} for e in EXAMPLES]


def tiny_profile(processes: int, *extra):
    """The tiny profile's sft and dpo sections, TRL's loss (one process only for the lean one), no dropout
    (so that two runs can be compared step by step), three steps of a global batch of 8."""
    return load_config(TINY, [f"launch.num_processes={processes}", "sft.logprobs=trl", "dpo.logprobs=trl",
                              "sft.dropout=0", "dpo.dropout=0", "sft.batch_size=8", "sft.per_device_batch_size=4",
                              "dpo.batch_size=8", "dpo.per_device_batch_size=4", "sft.max_steps=3",
                              "dpo.max_steps=3", "sft.max_length=128", "dpo.max_length=128", "model.device=cpu",
                              "model.dtype=float32", *extra])


def losses(model_dir) -> list[float]:
    state = json.loads((Path(model_dir) / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_two_processes_train_as_one_does_at_the_same_global_batch(tiny_model_dir, tmp_path, kind):
    rows, run = (EXAMPLES, training.sft) if kind == "sft" else (PAIRS, training.dpo)
    one, two = tiny_profile(1), tiny_profile(2)
    train_one = getattr(one, kind)
    run(tiny_model_dir, tmp_path / "one", rows, train_one, one.model, seed=0, launch=one.launch)
    summary = run(tiny_model_dir, tmp_path / "two", rows, getattr(two, kind), two.model, seed=0, launch=two.launch)
    assert summary["steps"] == 3 and summary["examples_trained"] == len(rows)
    assert (tmp_path / "two" / "config.json").is_file() and not list(tmp_path.glob(".two.*"))
    single, double = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(single) == len(double) == 3
    assert double[-1] < double[0]  # it trains
    # gradients averaged over 2 processes of 4 rows = accumulated over 2 micro-batches of 4: the same steps
    assert double == pytest.approx(single, rel=1e-3)


@pytest.mark.slow
def test_a_failing_launch_is_a_stage_error_with_its_last_error_line(tmp_path):
    two = tiny_profile(2)
    with pytest.raises(LaunchError, match=r"sft: accelerate launch exited with status [1-9].*model"):
        training.sft(str(tmp_path / "no-such-model"), tmp_path / "out", EXAMPLES, two.sft, two.model, seed=0,
                     launch=two.launch)
    assert not (tmp_path / "out").exists()


def test_lean_trainers_are_refused_with_several_processes():
    with pytest.raises(ConfigError, match=r"sft\.logprobs: selected runs in one process only.*logprobs: trl"):
        load_config(TINY, ["launch.num_processes=2", "sft.batch_size=32"])


def test_the_effective_batch_must_split_over_the_processes():
    with pytest.raises(ConfigError, match=r"sft\.batch_size: must be a multiple of per_device_batch_size x "
                                          r"launch\.num_processes \(4 x 3\)"):
        tiny_profile(3)


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("fsdp_offload", "FSDP"),
                                       ("deepspeed_zero3", "DEEPSPEED")])
def test_shipped_accelerate_configs_load_with_accelerates_own_loader(name, kind):
    cluster = load_accelerate_config(str(REPO / "params" / "accelerate" / f"{name}.yaml"))
    assert str(cluster.distributed_type).endswith(kind)
    if kind == "FSDP":  # the run's model folder must be a plain checkpoint: the full state dict is gathered
        assert cluster.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert cluster.fsdp_config["fsdp_offload_params"] is (name == "fsdp_offload")
    if kind == "DEEPSPEED":
        assert cluster.deepspeed_config["zero_stage"] == 3 and cluster.deepspeed_config["zero3_save_16bit_model"]


def test_a_bad_accelerate_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed_type: FSDP\nnot_an_accelerate_key: 1\n")
    for path, message in [(bad, "is not a valid accelerate config"), (tmp_path / "none.yaml", "not found")]:
        with pytest.raises(ConfigError, match=message) as err:
            LaunchConfig(accelerate_config=str(path)).validate("launch")
        assert "\n" not in str(err.value)


def test_accelerate_command():
    two = train.accelerate_command(LaunchConfig(num_processes=2), "/j.json", 29500, "bf16")
    assert two[-3:] == ["-m", "selfreward.method.worker", "/j.json"] and "--multi_gpu" in two
    assert two[two.index("--num_processes") + 1] == "2" and two[two.index("--mixed_precision") + 1] == "bf16"
    fsdp = train.accelerate_command(LaunchConfig(num_processes=8, accelerate_config="f.yaml"), "/j.json", 1)
    assert fsdp[fsdp.index("--config_file") + 1] == "f.yaml" and "--multi_gpu" not in fsdp


def test_last_error_line():
    log = ["loading...", "Traceback (most recent call last):", '  File "x.py"', "OSError: no such model 'x'",
           "E1129 torch.distributed.elastic... failed", ""]
    assert train.last_error_line(log) == "OSError: no such model 'x'"
    assert train.last_error_line(["just this"]) == "just this"


def test_last_error_line_skips_the_launchers_report():
    log = ["[rank1]: OSError: model folder x not found", "E1129 ... failed (exitcode: 1) local_rank: 0",
           "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "selfreward.method.worker FAILED"]
    assert train.last_error_line(log) == "OSError: model folder x not found"
