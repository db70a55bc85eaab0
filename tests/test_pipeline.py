"""End to end: `selfreward run params/tiny.yaml` on the real OASST data (mirror or hub)."""
import json
import shutil
import subprocess
import sys

import nbformat
import pytest

from conftest import REPO, git_status, run_cli
from selfreward import paper

pytestmark = pytest.mark.slow
TRAINING = ["data", "sft_baseline", "eft", "m1", "iteration_1", "iteration_2"]
INSTRUMENTS = ["head_to_head", "reference", "reward_model", "ifeval", "human_preference", "mt_bench", "lengths"]
STAGES = TRAINING + ["responses"] + INSTRUMENTS + ["results"]


def test_tiny_run_produces_every_model_dataset_and_manifest(tiny_run):
    root, _, _ = tiny_run
    run = root / "runs" / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["stages"]) == STAGES
    for name, entry in manifest["stages"].items():
        if name == "results":
            continue  # a report: no config sections of its own
        assert entry["status"] == "done", name
        assert entry["duration_s"] > 0 and entry["config"] and entry["fingerprint"]
        assert entry["notebook"] == f"notebooks/{name}.ipynb"  # named by stage, never renumbered
        # every output is recorded with its size and hash; model weights among them
        assert entry["outputs"] and all(len(r["sha256"]) == 64 for r in entry["outputs"].values())
        # its counts are recorded with its outputs; its executed notebook is not (a user may re-run and save it)
        assert f"stages/{name}.json" in entry["outputs"] and entry["notebook"] not in entry["outputs"]
        assert entry["kind"] and entry["peak_memory"]["rss_gb"] > 0
        notebook = nbformat.read(run / entry["notebook"], as_version=4)
        outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
        assert outputs and not [o for o in outputs if o.output_type == "error"]
    # each stage that loads a model ran in a kernel of its own (a fresh heap); the data stage shared the first
    process = {name: e["peak_memory"]["process"] for name, e in manifest["stages"].items() if name != "results"}
    model_stages = [name for name in process if name != "data"]
    assert len({process[name] for name in model_stages}) == len(model_stages)
    assert process["data"] == process["sft_baseline"]
    assert "models/m3/model.safetensors" in manifest["stages"]["iteration_2"]["outputs"]
    # what each stage was made from: the outputs of the stages it reads, as they were when it ran
    assert set(manifest["stages"]["iteration_2"]["made_from"]) == {"data", "iteration_1"}
    assert manifest["stages"]["iteration_2"]["made_from"]["iteration_1"] == manifest_digest(manifest, "iteration_1")
    assert (manifest["stages"]["iteration_2"]["kind"], manifest["stages"]["iteration_2"]["iteration"]) == ("iteration", 2)
    assert manifest["versions"]["torch"] and manifest["versions"]["trl"]
    assert manifest["stages"]["results"]["status"] == "done"
    assert manifest["stages"]["iteration_1"]["config"]["dpo"]["beta"] == 0.1
    for model in ["sft_baseline", "m1", "m2", "m3"]:
        assert (run / "models" / model / "config.json").is_file()
    counts = manifest["counts"]
    # a random-init judge scores every reply alike: no EFT example, and tiny.yaml lets M1 train on IFT alone
    assert counts["ift"] == 64 and counts["eft"] == 0 and counts["eft_parse_failures"] == 0
    assert manifest["stages"]["m1"]["counts"]["eft"] == 0 and manifest["stages"]["data"]["counts"]["eft_ift_overlap"] == 0
    for t in (1, 2):
        c = counts[f"iteration_{t}"]
        assert c["prompts_kept"] >= 1 and c["pairs"] >= 1 and c["candidates"] == 4 * c["prompts_kept"]
        pairs = [json.loads(line) for line in (run / "aift" / f"m{t}" / "pairs.jsonl").open()]
        assert len(pairs) == c["pairs"] and all(p["chosen_score"] > p["rejected_score"] for p in pairs)
        candidates = [json.loads(line) for line in (run / "aift" / f"m{t}" / "candidates.jsonl").open()]
        assert all(len(cand["judge"]["judgments"]) == 2 for r in candidates for cand in r["candidates"])
        assert (run / "aift" / f"m{t}" / "positive.jsonl").is_file()
    eft_train = [json.loads(line) for line in (run / "eft" / "eft_train.jsonl").open()]
    assert all(e["response"].rstrip().endswith(f"Score: {e['score']}") for e in eft_train)


def manifest_digest(manifest: dict, stage: str) -> str:
    from selfreward.run.manifest import outputs_digest

    return outputs_digest(manifest["stages"][stage])


def test_rerun_skips_unchanged_stages_and_reruns_changed_ones(tiny_run):
    root, _, _ = tiny_run
    again = run_cli(root / "runs", root / "cache", "--no-book")
    assert again.returncode == 0
    assert all(f"[{name}] unchanged, skipped" in again.stdout for name in STAGES if name != "results")
    assert "[results] running" in again.stdout  # reports are always re-rendered
    out = root / "changed"
    shutil.copytree(root / "runs", out)
    changed = run_cli(out, root / "cache", "--no-book", "--set", "dpo.beta=0.2", "--set", "iterations=1",
                      "--set", "evaluation.enabled=false")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "[m1] unchanged, skipped" in changed.stdout
    assert "[iteration_1] running 05_iteration.ipynb (its config or inputs changed)" in changed.stdout
    manifest = json.loads((out / "tiny" / "manifest.json").read_text())
    assert list(manifest["stages"]) == TRAINING[:5]
    assert manifest["stages"]["iteration_1"]["config"]["dpo"]["beta"] == 0.2


def test_only_runs_a_stage_and_what_it_needs_and_leaves_the_rest(tiny_run):
    root, _, _ = tiny_run
    out = root / "only"
    shutil.copytree(root / "runs", out)
    before = json.loads((out / "tiny" / "manifest.json").read_text())["stages"]
    (out / "tiny" / "book").rename(out / "tiny" / "old_book")
    result = run_cli(out, root / "cache", "--set", "dpo.beta=0.2", "--only", "human_preference")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[m1] unchanged, skipped" in result.stdout
    for name in ("iteration_1", "iteration_2", "human_preference"):  # its needs, changed by dpo.beta
        assert f"[{name}] running" in result.stdout
    for name in ("head_to_head", "reference", "reward_model", "mt_bench", "lengths", "responses", "results"):
        assert f"[{name}]" not in result.stdout  # not needed: neither run nor skipped
    after = json.loads((out / "tiny" / "manifest.json").read_text())["stages"]
    assert list(after) == STAGES
    # left as it was, to be re-run by a whole run, and marked stale: it was made from the models before
    assert after["head_to_head"] == {**before["head_to_head"], "stale": "made before iteration_1 changed"}
    assert after["iteration_1"]["config"]["dpo"]["beta"] == 0.2
    assert not (out / "tiny" / "book").exists()  # a partial run builds no book
    unknown = run_cli(out, root / "cache", "--only", "ablation")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1].startswith("selfreward: error: unknown stage 'ablation'")


def test_a_profile_without_eft_examples_stops_cleanly(tiny_run):
    root, _, _ = tiny_run
    out = root / "sampled"
    shutil.copytree(root / "runs", out)
    # a random-init judge never writes "Score: n": sampled mode yields no score, hence no EFT example
    result = run_cli(out, root / "cache", "--no-book", "--set", "judge.mode=sampled", "--set", "eft.min_examples=1")
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("selfreward: error: stage eft stopped: StageError: no EFT example")
    manifest = json.loads((out / "tiny" / "manifest.json").read_text())
    assert manifest["stages"]["sft_baseline"]["status"] == "done"
    assert manifest["stages"]["eft"]["status"] == "failed" and "no EFT example" in manifest["stages"]["eft"]["error"]
    # the stages after it keep their records (a failure changes only its own), marked stale
    assert manifest["stages"]["m1"]["status"] == "done" and manifest["stages"]["m1"]["stale"] == \
        "made from eft, which is failed"
    assert (out / "tiny" / "models" / "sft_baseline" / "config.json").is_file()  # earlier work kept
    assert (out / "tiny" / manifest["stages"]["eft"]["notebook"]).is_file()


def test_evaluation_outputs_and_results_chapter(tiny_run):
    root, _, _ = tiny_run
    run = root / "runs" / "tiny"
    h2h = json.loads((run / "eval" / "head_to_head.json").read_text())
    assert list(h2h["comparisons"]) == ["m1 vs sft_baseline", "m2 vs sft_baseline", "m3 vs sft_baseline",
                                        "m2 vs m1", "m3 vs m2", "m3 vs m1"]
    for c in h2h["comparisons"].values():
        assert c["win"] + c["tie"] + c["loss"] == c["n"] == 8 and 0 <= c["health"]["stats"]["first_slot_rate"] <= 1
        soft = c["soft_win_rate"]  # the constrained judge exposes probabilities: a position-debiased rate
        assert soft["n"] == 8 and soft["low"] <= soft["value"] <= soft["high"]
        assert c["health"]["informative"] is False  # a random-init judge cannot see anything
    assert all(d["blind"] for d in h2h["differences"])  # and every paired difference of it says so
    ref = json.loads((run / "eval" / "reference.json").read_text())
    assert ref["reference_generator"] == "gpt4_1106_preview" and ref["reference_mean_chars"] > 0
    assert set(ref["models"]) == {"sft_baseline", "m1", "m2", "m3"}
    assert all(0 <= m["length_controlled"]["value"] <= 1 for m in ref["models"].values())
    hp = json.loads((run / "eval" / "human_preference.json").read_text())
    assert set(hp["models"]) == {"sft_baseline", "m1", "m2", "m3"} and hp["pairs"] > 0
    assert hp["models"]["m1"]["implicit_reward"] is None and hp["models"]["m3"]["reference"] == "m2"
    assert all(0 <= m["length_normalised"]["value"] <= 1 for m in hp["models"].values())
    assert 0 <= hp["models"]["m3"]["implicit_reward"]["value"] <= 1
    steps = [(d["before"], d["after"]) for d in hp["differences"]]
    assert steps == [("sft_baseline", "m1"), ("m1", "m2"), ("m2", "m3"), ("m1", "m3")]
    assert all(d["estimate"]["low"] <= d["estimate"]["value"] <= d["estimate"]["high"] for d in hp["differences"])
    mt = json.loads((run / "eval" / "mt_bench.json").read_text())
    assert mt["questions"] == 4 and set(mt["models"]) == {"sft_baseline", "m1", "m2", "m3"}
    assert all(1 <= m["overall"]["value"] <= 10 for m in mt["models"].values())
    rm = json.loads((run / "eval" / "reward_model.json").read_text())
    assert set(rm["models"]) == {"sft_baseline", "m1", "m2", "m3", "sft_baseline (multiple choice)"}
    for entry in rm["models"].values():
        accuracy = entry["metrics"]["pairwise_accuracy"]
        assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]
    lengths = json.loads((run / "eval" / "lengths.json").read_text())
    assert lengths["prompts"] == 8 and all(0 <= m["finished"]["value"] <= 1 for m in lengths["models"].values())
    notebook = nbformat.read(run / "notebooks" / "results.ipynb", as_version=4)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "m3 vs sft_baseline" in html and "pairwise accuracy" in html and "positive-only examples" in html
    assert "Deviations" not in html and "judge prompt" in html  # the deviations table: aspect rows
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    # the findings' forest plots, win/tie/loss bars, reward-model metrics and score histograms, IFEval (per model, per
    # instruction kind), human preference, MT-Bench, lengths, judge health
    assert len(figures) == 10
    # the findings: one row per paper claim and instrument; the tiny judge answers by position, so every
    # head-to-head row says so instead of a verdict
    from selfreward.run import report

    findings = report.findings_table(run)
    assert set(findings["claim"]) == {claim.text for claim in paper.CLAIMS}
    assert list(findings.columns) == ["claim", "paper", "ours", "verdict"]  # four columns: they fit the book's page
    details = report.findings_details(run)
    by_head_to_head = details[details["instrument"].str.startswith("Head-to-head")]
    assert len(by_head_to_head) == 3 and all(by_head_to_head["verdict"].str.startswith("judge uninformative"))
    assert "Findings" in "".join(c.source for c in notebook.cells) and "not measured here" in html


def test_book_is_built_in_the_run_folder_with_every_chapter(tiny_run):
    root, result, status_before = tiny_run
    html = root / "runs" / "tiny" / "book" / "_build" / "html"
    assert f"book: {html / 'index.html'}" in result.stdout
    assert git_status() == status_before  # the checkout's book/ (the committed reference) is untouched
    pages = sorted(p.name for p in (html / "run").glob("*.html"))
    assert pages == sorted(f"{name}.html" for name in STAGES)
    results = (html / "run" / "results.html").read_text()
    assert results.count("<table") >= 10 and results.count("<img") >= 7
    assert "Traceback" not in results


@pytest.mark.parametrize("page,texts,tables,images", [
    ("results", ["Findings", "Head-to-head instruction following", "Deviations from the paper"], 10, 7),
    ("iteration_1", ["One prompt", "How the self-judge behaved", "Training M2"], 5, 1),
])
def test_a_real_browser_renders_the_chapters(tiny_run, tmp_path, page, texts, tables, images):
    """Headless Chromium opens a built chapter; its DOM has the tables and figures, and the screenshot shows
    them (coloured plot pixels appear only if the images rendered)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("Chromium is needed for this test: apt-get install chromium (.ci/run does)")
    root, _, _ = tiny_run
    url = (root / "runs" / "tiny" / "book" / "_build" / "html" / "run" / f"{page}.html").as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,6000",
             "--disable-background-networking", "--no-first-run"]
    shot = tmp_path / f"{page}.png"
    subprocess.run(flags + [f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count("<table") >= tables and dom.count("<img") >= images
    assert all(text in dom for text in texts)
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 6000)
    colours = set(image.resize((320, 1500)).getdata())
    # matplotlib's default blue and orange lines and bars
    assert any(b > 150 and r < 90 and 90 < g < 150 for r, g, b in colours), "no plot rendered"
    assert len(colours) > 500


def test_compare_two_runs_that_differ_in_one_param(tiny_run):
    root, _, _ = tiny_run
    out = root / "beta"
    shutil.copytree(root / "runs", out, ignore=shutil.ignore_patterns("book"))
    changed = run_cli(out, root / "cache", "--no-book", "--set", "dpo.beta=0.2")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "[m1] unchanged, skipped" in changed.stdout and "[iteration_1] running" in changed.stdout
    result = subprocess.run([sys.executable, "-m", "selfreward.cli", "compare", str(root / "runs" / "tiny"),
                             str(out / "tiny"), "--book", str(root / "comparison")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    html = (root / "comparison" / "_build" / "html" / "comparison.html").read_text()
    diff = html[html.index('id="params-that-differ"'):html.index('id="headline-metrics"')]
    assert diff.count("<tr") == 3 and "dpo.beta" in diff  # two header rows (pandas) and the one param
    metrics = html[html.index('id="headline-metrics"'):]
    for metric in ("m3 vs sft_baseline: soft win rate %", "human preference m3: likelihood %",
                   "MT-Bench m3: overall", "reward model m1: pairwise accuracy %", "iteration_1: preference pairs",
                   "m3 vs GPT-4 Turbo outputs: length-controlled %", "m3: answers that finish %"):
        assert metric in metrics


def test_every_chapter_has_its_figures_and_at_most_one_log_block(tiny_run):
    root, _, _ = tiny_run
    pages = root / "runs" / "tiny" / "book" / "_build" / "html" / "run"
    for page in pages.glob("*.html"):
        html = page.read_text()
        assert html.count("The stage’s log") + html.count("The stage's log") <= 1, page.name
        assert "/tmp/" not in html and "site-packages" not in html, page.name  # no machine paths shown
    for chapter in ("sft_baseline", "m1", "iteration_1", "iteration_2"):
        assert (pages / f"{chapter}.html").read_text().count("<img") >= 1, chapter  # training curves
    iteration = (pages / "iteration_1.html").read_text()
    assert "Self-rewarding iteration 1" in iteration and "One prompt" in iteration and "How the self-judge" in iteration
    results = (pages / "results.html").read_text()
    assert "Findings" in results and "The self-judge across iterations" in results
    assert "What the models wrote" in (pages / "responses.html").read_text()
    assert "Deviations from the paper" in results


def test_checkpoint_selection_keeps_the_checkpoint_that_wins_most(tiny_run):
    root, _, _ = tiny_run
    out = root / "selection"
    shutil.copytree(root / "runs", out, ignore=shutil.ignore_patterns("book"))
    # DPO batches of 2 pairs: the tiny iteration's few pairs make at least two steps to choose from (4 pairs with
    # this session's packages, transformers 5.25 and TRL 1.16, where batches of 4 had made one step)
    result = run_cli(out, root / "cache", "--no-book", "--set", "aift.select_every_steps=1", "--set",
                     "aift.select_prompts=3", "--set", "evaluation.enabled=false", "--set", "iterations=1",
                     "--set", "dpo.batch_size=2", "--set", "dpo.per_device_batch_size=2")
    assert result.returncode == 0, result.stderr[-2000:]
    run = out / "tiny"
    selection = json.loads((run / "aift" / "m1" / "checkpoint_selection.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    trained = manifest["stages"]["iteration_1"]["counts"]["train_steps"]
    steps = [c["step"] for c in selection["checkpoints"]]
    assert trained >= 2 and steps == list(range(1, trained + 1))  # a checkpoint at every step
    assert selection["prompts"] == 3 and selection["chosen_step"] in steps
    best = max(selection["checkpoints"], key=lambda c: (c["win_rate_vs_m_t"], c["step"]))
    assert selection["chosen_step"] == best["step"]
    assert manifest["stages"]["iteration_1"]["counts"]["train_selected_step"] == best["step"]
    assert (run / "models" / "m2" / "model.safetensors").is_file() and not (run / "aift" / "m1" / "checkpoints").exists()


TOY = '''
"""A toy instrument, in one module outside the package: the share of answers that mention a digit."""
from selfreward.evaluation import register
from selfreward.evaluation.estimates import mean
from selfreward.evaluation.instrument import Instrument
from selfreward.evaluation.responses import load
from selfreward.io import write_json

import pandas as pd


@register
class Digits(Instrument):
    name = "toy_digits"
    title = "Toy: answers with a digit"
    description = "How often each model's answer contains a digit."
    uses_responses = True
    order = 99

    def run(self, cfg, run):
        shares = {n: mean([float(any(c.isdigit() for c in r["response"])) for r in rows]).to_dict()
                  for n, rows in load(run, self.models(cfg)).items()}
        write_json(self.file(run), {"models": shares})
        return {"models": len(shares)}

    def tables(self, run):
        return [("Share of answers with a digit.", pd.DataFrame(self.result(run)["models"]).T)]

    def headlines(self, run):
        from selfreward.evaluation.estimates import Estimate
        return {f"toy {n}: answers with a digit %": Estimate.from_dict(e) for n, e in self.result(run)["models"].items()}
'''


def test_a_new_instrument_is_one_module(tiny_run, tmp_path):
    """A toy instrument in one module (named by SELFREWARD_INSTRUMENTS) runs as a stage, has its chapter and
    its section in the results, and its headlines in `compare`; no file of the checkout changes."""
    root, _, _ = tiny_run
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "toy_instrument.py").write_text(TOY)
    env = {"SELFREWARD_INSTRUMENTS": "toy_instrument", "PYTHONPATH": str(plugin)}
    before = git_status(".")
    out = tmp_path / "runs"
    shutil.copytree(root / "runs", out, ignore=shutil.ignore_patterns("book"))
    result = run_cli(out, root / "cache", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[toy_digits] running instrument.ipynb (not run before)" in result.stdout
    assert "[lengths] unchanged, skipped" in result.stdout and "[m1] unchanged, skipped" in result.stdout
    manifest = json.loads((out / "tiny" / "manifest.json").read_text())
    assert list(manifest["stages"])[-2:] == ["toy_digits", "results"]
    html = out / "tiny" / "book" / "_build" / "html" / "run"
    assert "Toy: answers with a digit" in (html / "toy_digits.html").read_text()
    results = (html / "results.html").read_text()
    assert "Toy: answers with a digit" in results and "Share of answers with a digit." in results
    comparison = subprocess.run([sys.executable, "-m", "selfreward.cli", "compare", str(root / "runs" / "tiny"),
                                 str(out / "tiny"), "--book", str(tmp_path / "comparison")], capture_output=True,
                                text=True, env={**__import__("os").environ, **env})
    assert comparison.returncode == 0, comparison.stderr[-2000:]
    assert "toy m3: answers with a digit %" in (tmp_path / "comparison" / "_build" / "html" / "comparison.html").read_text()
    assert git_status(".") == before


# ---------------------------------------------------------------- a stage notebook re-run by hand

def notebook_by_hand(path, overrides: str | None = None):
    """As a user in Jupyter: the notebook's injected overrides edited, then its cells run with nbclient from the
    notebook's own folder; returns the executed notebook (raises CellExecutionError on an error)."""
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    if overrides is not None:
        cell = next(c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", []))
        cell.source = cell.source.replace("overrides = {}", f"overrides = {overrides}")
    NotebookClient(notebook, kernel_name="selfreward", timeout=600,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(notebook, path)
    return notebook


def weights_md5(path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def test_executed_notebooks_hold_readable_parameters_and_no_machine_path(tiny_run):
    root, _, _ = tiny_run
    run = root / "runs" / "tiny"
    for path in (run / "notebooks").glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        injected = next(c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert injected.source == (f'# Parameters\nparams_file = "params/tiny.yaml"\noverrides = {{}}\nrun_dir = ".."\n'
                                   f'stage = "{path.stem}"\n'), path.name
        text = path.read_text()
        assert str(root) not in text and str(REPO) not in text and "/tmp/" not in text, path.name
    tables = [o for c in nbformat.read(run / "notebooks" / "iteration_1.ipynb", as_version=4).cells
              for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert "dpo.beta" in tables[0]["data"]["text/html"]  # the stage's resolved config, shown as a table


def test_a_stage_notebook_rerun_with_a_changed_parameter_is_one_recorded_experiment(tiny_run, tmp_path):
    """Changing dpo.beta in iteration_2's notebook and re-running its cells retrains M3 as a pipeline action:
    the manifest records the override as a tweak with the new fingerprint and config, what no longer follows is
    stale, `--dry-run` says what would run, and the next `selfreward run` keeps the tweak, says so, and brings
    the rest up to date."""
    root, _, _ = tiny_run
    out = tmp_path / "runs"
    shutil.copytree(root / "runs", out, ignore=shutil.ignore_patterns("book"))
    run = out / "tiny"
    before, m3 = json.loads((run / "manifest.json").read_text()), weights_md5(run / "models" / "m3" / "model.safetensors")
    notebook_by_hand(run / "notebooks" / "iteration_2.ipynb", '{"dpo.beta": 0.3}')
    after = json.loads((run / "manifest.json").read_text())
    assert after["overrides"] == {"dpo.beta": 0.3}
    assert after["tweaks"]["dpo.beta"]["value"] == 0.3
    assert after["tweaks"]["dpo.beta"]["notebook"] == "notebooks/iteration_2.ipynb"
    assert after["config"]["dpo"]["beta"] == 0.3 and "beta: 0.3" in (run / "config.yaml").read_text()
    stage = after["stages"]["iteration_2"]
    assert stage["status"] == "done" and stage["config"]["dpo"]["beta"] == 0.3
    assert stage["fingerprint"] != before["stages"]["iteration_2"]["fingerprint"] and stage["finished"] > \
        before["stages"]["iteration_2"]["finished"]
    assert weights_md5(run / "models" / "m3" / "model.safetensors") != m3  # M3 retrained
    # dpo.beta is the whole run's: M2's training read it too (so M3 now starts from a stale M2), and everything
    # after M3 was made from the old one
    assert after["stages"]["iteration_1"]["stale"] == "its config changed since it ran"
    assert stage["stale"] == "made from iteration_1, which is stale"
    for name in ("responses", "head_to_head", "reward_model", "lengths", "results"):
        assert after["stages"][name]["stale"].startswith("made "), name
    assert not after["stages"]["m1"].get("stale")
    dry = run_cli(out, root / "cache", "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "[tweaks] keeping dpo.beta=0.3 (set in notebooks/iteration_2.ipynb" in dry.stdout
    assert "iteration_1       run   its config or inputs changed (stale: its config changed since it ran)" in dry.stdout
    assert "iteration_2       run   if iteration_1 changes when re-run (stale: made from iteration_1" in dry.stdout
    assert "m1                skip  unchanged" in dry.stdout
    assert json.loads((run / "manifest.json").read_text()) == after  # a dry run writes nothing
    again = run_cli(out, root / "cache", "--no-book")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[tweaks] keeping dpo.beta=0.3" in again.stdout and "[m1] unchanged, skipped" in again.stdout
    assert "[iteration_1] running 05_iteration.ipynb (its config or inputs changed)" in again.stdout
    final = json.loads((run / "manifest.json").read_text())
    assert final["config"]["dpo"]["beta"] == 0.3 and final["overrides"] == {"dpo.beta": 0.3}
    assert not any(entry.get("stale") for entry in final["stages"].values())
    replaced = run_cli(out, root / "cache", "--no-book", "--set", "dpo.beta=0.1", "--only", "iteration_1")
    assert "[tweaks] dpo.beta=0.1 from the command line replaces dpo.beta=0.3" in replaced.stdout
    assert json.loads((run / "manifest.json").read_text())["tweaks"] == {}


def test_a_notebook_rerun_that_cannot_run_writes_nothing(tiny_run, tmp_path):
    """An unknown key or a bad value in a notebook's overrides is the same one line as --set; a run folder held by
    another run is refused with the holder's PID; neither writes anything."""
    from nbclient.exceptions import CellExecutionError

    from selfreward.run.records import locked
    from selfreward.rundir import RunDir

    root, _, _ = tiny_run
    out = tmp_path / "runs"
    shutil.copytree(root / "runs", out, ignore=shutil.ignore_patterns("book"))
    run = out / "tiny"
    before = (run / "manifest.json").read_text()
    for overrides, line in [('{"dpo.betta": 0.3}', "dpo.betta: unknown key (known: batch_size, beta"),
                            ('{"dpo.beta": -1}', "dpo.beta: must be > 0")]:
        with pytest.raises(CellExecutionError) as err:
            notebook_by_hand(run / "notebooks" / "lengths.ipynb", overrides)
        assert err.value.ename == "ConfigError" and line in err.value.evalue
    with locked(RunDir(run)):
        with pytest.raises(CellExecutionError) as err:
            notebook_by_hand(run / "notebooks" / "lengths.ipynb")
    assert err.value.ename == "RunFolderBusy"
    assert f"run folder {run.resolve()} is in use by PID {__import__('os').getpid()} " in err.value.evalue
    assert (run / "manifest.json").read_text() == before


def test_a_moved_run_folder_still_opens(tiny_run, tmp_path):
    root, _, _ = tiny_run
    moved = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(root / "runs" / "tiny", moved / "tiny", ignore=shutil.ignore_patterns("book"))
    executed = notebook_by_hand(moved / "tiny" / "notebooks" / "lengths.ipynb")
    assert not [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    entry = json.loads((moved / "tiny" / "manifest.json").read_text())["stages"]["lengths"]
    assert entry["status"] == "done" and (moved / "tiny" / "eval" / "lengths.json").is_file()


def test_selfreward_lab_serves_the_run_notebooks(tiny_run, tmp_path):
    """`selfreward lab RUN`: a real JupyterLab server answers on localhost with the run's stage notebooks and the
    selfreward kernel, then stops."""
    import os
    import socket
    import time
    import urllib.request

    root, _, _ = tiny_run
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = "selfreward-test-token"
    env = dict(os.environ, JUPYTER_TOKEN=token, JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    server = subprocess.Popen([sys.executable, "-m", "selfreward.cli", "lab", str(root / "runs" / "tiny"), "--port",
                               str(port), "--no-browser"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, listing = time.time() + 90, None
        while time.time() < deadline and listing is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=5) as reply:
                    listing = json.loads(reply.read())
            except OSError:
                time.sleep(1)
        assert listing is not None, "the server did not answer"
        names = {item["name"] for item in listing["content"]}
        assert {"iteration_1.ipynb", "results.ipynb", "data.ipynb"} <= names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernelspecs?token={token}", timeout=10) as reply:
            specs = json.loads(reply.read())
        assert specs["default"] == "selfreward" and "selfreward" in specs["kernelspecs"]
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert server.returncode is not None


def test_the_findings_are_rederived_from_the_rows_of_the_run_and_of_its_book(tiny_run, tmp_path):
    """`selfreward findings` recomputes every interval and verdict from the per-item rows: of the run folder, and
    of its book (compact, gzipped rows without the long texts); a changed row is a mismatch, exit 1."""
    import gzip

    root, _, _ = tiny_run
    run = root / "runs" / "tiny"

    def findings(path):
        return subprocess.run([sys.executable, "-m", "selfreward.cli", "findings", str(path)], capture_output=True,
                              text=True)

    for path in (run, run / "book"):
        result = findings(path)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "matches the record" in result.stdout and "- M2 > M1" in result.stdout
    rows = run / "book" / "run" / "rows"
    with gzip.open(rows / "eval" / "ifeval" / "m2.jsonl.gz", "rt") as handle:
        ifeval = [json.loads(line) for line in handle]
    assert ifeval and "response" not in ifeval[0] and {"key", "strict", "loose", "kinds"} <= set(ifeval[0])
    changed = tmp_path / "rows"
    shutil.copytree(rows, changed)
    ifeval[0]["strict"] = [not ifeval[0]["strict"][0]] + ifeval[0]["strict"][1:]
    with gzip.open(changed / "eval" / "ifeval" / "m2.jsonl.gz", "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in ifeval))
    result = findings(changed)
    assert result.returncode == 1 and "do not match the record" in result.stdout and "IFEval" in result.stdout
    assert findings(tmp_path / "nothing").returncode == 2


def test_seeds_train_one_chain_per_seed_and_pool_them(tiny_run, tmp_path):
    """`--set seeds=[0,1]`: the run's own chain is seed 0 (unchanged, skipped), seed 1's chain runs in
    seeds/seed_1/ with the data taken from the run; its IFEval pools both seeds, the instruments it did not run
    name the missing seed."""
    root, _, _ = tiny_run
    out = tmp_path / "runs"
    shutil.copytree(root / "runs", out, ignore=shutil.ignore_patterns("book"))
    result = run_cli(out, root / "cache", "--set", "seeds=[0,1]", "--only", "ifeval")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[seeds] seed 1" in result.stdout and "[ifeval] unchanged, skipped" in result.stdout
    seed_run = out / "tiny" / "seeds" / "seed_1"
    recorded = json.loads((seed_run / "manifest.json").read_text())
    assert recorded["config"]["seed"] == 1 and recorded["config"]["split_seed"] == 0
    assert recorded["stages"]["data"]["reused_from"] == "../.."  # what does not depend on the seed is shared
    assert recorded["stages"]["ifeval"]["status"] == "done"
    assert recorded["stages"]["head_to_head"]["status"] != "done"  # not asked for
    # M0 (the same in every chain) answers IFEval in the first seed's chain only
    assert (out / "tiny" / "eval" / "ifeval" / "base.jsonl").is_file()
    assert not (seed_run / "eval" / "ifeval" / "base.jsonl").exists()
    from selfreward.evaluation import pooling

    pooled = pooling.pooled_differences(out / "tiny")
    ifeval = next(d for d in pooled["IFEval: instructions a program checks"] if d.claim == "m2_beats_m1")
    # pooled over both chains: at least the seeds' k - 1 degrees of freedom (more where the items' sampling weighs)
    assert ifeval.note == "2 of 2 seeds" and (ifeval.estimate.df is None or ifeval.estimate.df >= 1)
    lengths = pooled["Reply lengths"][0]
    assert lengths.note == "1 of 2 seeds (missing: seed 1)"
