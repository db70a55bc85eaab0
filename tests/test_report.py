import json

from selfreward.run import report


def test_stage_times_sum_the_finished_stages(tmp_path):
    manifest = {"stages": {
        "data": {"status": "done", "duration_s": 30, "counts": {}},
        "eft": {"status": "done", "duration_s": 90, "counts": {"tokens_generated": 400}},
        "m1": {"status": "failed", "duration_s": 12, "counts": {}},
        "iteration_1": {"status": "pending"}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    table = report.stage_times(tmp_path)
    assert table.loc["eft", "minutes"] == 1.5 and table.loc["eft", "tokens generated"] == 400
    assert table.loc["iteration_1", "minutes"] == 0
    total = table.loc["all finished stages"]
    assert total["minutes"] == 2.0 and total["tokens generated"] == 400 and total["status"] == "2 done"


def test_stage_times_show_peak_memory_and_its_maximum(tmp_path):
    manifest = {"stages": {
        "data": {"status": "done", "duration_s": 30, "counts": {}, "peak_memory": {"rss_gb": 0.5}},
        "m1": {"status": "done", "duration_s": 60, "counts": {}, "peak_memory": {"rss_gb": 2.25}, "stale": "x"},
        "iteration_1": {"status": "pending"}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    table = report.stage_times(tmp_path)
    assert table.loc["m1", "peak RSS GB"] == 2.25 and table.loc["m1", "status"] == "done (stale)"
    assert table.loc["all finished stages", "peak RSS GB"] == 2.25
    assert "peak GPU allocated GB" not in table.columns  # no GPU in this run
