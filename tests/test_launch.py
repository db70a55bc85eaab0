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


# What a CPU cannot do that the shipped GPU configs do: nothing else may differ between them and what is tested
CPU_ONLY = {"use_cpu": (True, "the processes compute on the CPU (gloo)"),
            "fsdp_config.fsdp_offload_params": (False, "offloading pins host memory for a GPU; a CPU has none")}
SHIPPED = REPO / "params" / "accelerate"


def flat(mapping, prefix=""):
    return {k: v for key, value in mapping.items()
            for k, v in (flat(value, f"{prefix}{key}.").items() if isinstance(value, dict) else [(prefix + key, value)])}


def cpu_variant(name: str, folder: Path) -> Path:
    """A shipped accelerate config with only the CPU_ONLY keys changed."""
    import yaml

    config = yaml.safe_load((SHIPPED / f"{name}.yaml").read_text())
    for dotted, (value, _) in CPU_ONLY.items():
        node, *path = [config] + dotted.split(".")
        for part in path[:-1]:
            node = node.get(part, {})
        if path[-1] in node or "." not in dotted:
            node[path[-1]] = value
    target = folder / f"{name}_cpu.yaml"
    target.write_text(yaml.safe_dump(config))
    return target


@pytest.mark.parametrize("name", ["fsdp", "fsdp_offload", "deepspeed_zero3"])
def test_the_tested_configs_differ_from_the_shipped_ones_only_in_what_a_cpu_cannot_do(name, tmp_path):
    import yaml

    shipped = flat(yaml.safe_load((SHIPPED / f"{name}.yaml").read_text()))
    tested = flat(yaml.safe_load(cpu_variant(name, tmp_path).read_text()))
    assert set(shipped) == set(tested)
    differing = {k for k in shipped if shipped[k] != tested[k]}
    assert differing <= set(CPU_ONLY), differing
    if name.startswith("fsdp"):
        assert shipped["fsdp_config.fsdp_version"] == 2  # FSDP1 cannot run on a CPU, and FSDP2 is what ships


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory):
    """The 1-process runs the sharded ones must equal, by (kind, finetune)."""
    done = {}

    def run(kind: str, finetune: str):
        if (kind, finetune) not in done:
            cfg = tiny_profile(1, f"model.finetune={finetune}")
            out = tmp_path_factory.mktemp(f"one-{kind}-{finetune}")
            rows, train = (EXAMPLES, training.sft) if kind == "sft" else (PAIRS, training.dpo)
            train(tiny_model_dir, out / "model", rows, getattr(cfg, kind), cfg.model, seed=0, launch=cfg.launch)
            done[kind, finetune] = out / "model"
        return done[kind, finetune]

    return run


def state(model_dir):
    from selfreward.models import load_model

    return {k: v.float() for k, v in load_model(str(model_dir), "float32", "cpu").state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("config,kind,finetune", [("fsdp", "sft", "full"), ("fsdp", "dpo", "full"),
                                                  ("fsdp", "sft", "lora"), ("deepspeed_zero3", "sft", "full"),
                                                  ("deepspeed_zero3", "dpo", "full")])
def test_sharded_training_is_sharded_trains_as_one_process_and_saves(tiny_model_dir, one_process, tmp_path,
                                                                     monkeypatch, config, kind, finetune):
    """Two gloo processes with a shipped FSDP2 / ZeRO-3 config (CPU_ONLY keys changed): the model is wrapped
    by FSDP2 (not DDP) or DeepSpeed, each process holds about half of the parameters, ranks > 0 never held
    the full weights (FSDP: built on the meta device; ZeRO-3: loaded partitioned), the losses equal the
    1-process run's and the saved model reloads equal to its model."""
    import torch

    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent / "cpu_fsdp"))  # the test-only switch
    cfg = tiny_profile(2, f"model.finetune={finetune}", f"launch.accelerate_config={cpu_variant(config, tmp_path)}")
    rows, train = (EXAMPLES, training.sft) if kind == "sft" else (PAIRS, training.dpo)
    summary = train(tiny_model_dir, tmp_path / "two", rows, getattr(cfg, kind), cfg.model, seed=0, launch=cfg.launch)
    processes = summary["processes"]
    assert [p["rank"] for p in processes] == [0, 1]
    expected = "FSDP2" if config == "fsdp" else "DeepSpeedEngine"
    assert all(p["wrapper"] == expected for p in processes), processes
    for p in processes:
        assert p["held_numel"] == pytest.approx(p["total_numel"] / 2, rel=0.1), p
    total = processes[0]["total_numel"]
    if config == "fsdp":
        assert processes[1]["loaded_numel"] == 0  # rank 1 built the model on the meta device
    else:
        assert processes[1]["loaded_numel"] < 0.6 * total  # rank 1 loaded its partition only
    single = one_process(kind, finetune)
    assert losses(tmp_path / "two") == pytest.approx(losses(single), rel=1e-3)
    ours, theirs = state(tmp_path / "two"), state(single)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5, msg=name)


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
