from llamaduo.records import GateDecision, RoundRecord, ServiceStats
from llamaduo.report import plot_rounds, round_markdown, worst_items

ENTRY = RoundRecord(round=2, train_rows=60, synthetic_rows_added=20, dropped={"duplicate": 3},
                    metrics={"judge_score": 72.5, "rougeL": 0.7},
                    gate=GateDecision(passed=True, metric="judge_score", value=72.5, threshold=70,
                                      reason="all: judge_score mean 72.5 >= 70",
                                      criteria=[{"name": "judge_score mean", "value": 72.5, "threshold": 70,
                                                 "passed": True}]),
                    service=ServiceStats(calls=10, failed=1, retries=2, cost_usd=0.01))
PREV = ENTRY.model_copy(update={"round": 1, "metrics": {"judge_score": 60.0, "rougeL": 0.5}})


def test_markdown_has_changes_deltas_baselines_and_gate():
    md = round_markdown(ENTRY, PREV, {"base student": {"judge_score": 20.0}}, plot="metrics.png")
    assert "# Round 2: PASS" in md and "+20 curated" in md and "duplicate 3" in md
    assert "| judge_score | 72.5 (+12.5) | 60 | 20 |" in md
    assert "| judge_score mean | 72.5 | 70 | yes |" in md and "![metrics per round](metrics.png)" in md


def test_worst_items_first_with_judge_reasons():
    scored = [{"instruction": "a", "reference": "r", "answer": "x", "score": 90, "rougeL": 1.0, "judge_reason": "ok"},
              {"instruction": "b", "reference": "r", "answer": "y", "score": 10, "rougeL": 0.0,
               "judge_reason": "wrong label"},
              {"instruction": "c", "reference": "r", "answer": "z", "rougeL": 0.0}]
    rows = worst_items(scored)
    assert [r["instruction"] for r in rows] == ["c", "b", "a"]
    assert rows[0]["judge_reason"] == "not judged" and rows[1]["judge_reason"] == "wrong label"


def test_plot_is_a_png(tmp_path):
    base = ENTRY.model_copy(update={"round": 0, "metrics": {"judge_score": 10}})
    p = plot_rounds([base, PREV, ENTRY], tmp_path / "m.png", metric="judge_score", threshold=70,
                    baselines={"service LLM": {"judge_score": 85}})
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_round_report_inlines_the_plot_for_the_ui_and_links_the_file(tmp_path):
    import base64

    from llamaduo.report import write_round_report

    md, items = write_round_report(tmp_path, ENTRY, PREV, [PREV, ENTRY], {}, metric="judge_score", threshold=70,
                                   teacher_note="", out="rounds/round_02/report.md")
    inline = md.split("](data:image/png;base64,", 1)[1].split(")", 1)[0]
    assert base64.b64decode(inline)[:8] == b"\x89PNG\r\n\x1a\n", "the UI's copy carries the image itself"
    on_disk = (tmp_path / "rounds/round_02/report.md").read_text()
    assert "![metrics per round](../../report/metrics.png)" in on_disk and "base64" not in on_disk
    assert items == [] and (tmp_path / "report/metrics.png").is_file()


def test_values_in_the_round_report_cannot_forge_rows_or_load_anything():
    """Issue 28, point 12: the round report goes through the one markdown module like the decision page."""
    import pytest

    markdown_it = pytest.importorskip("markdown_it")
    gate = ENTRY.gate.model_dump()
    gate["reason"] = "![x](https://attacker.example/pixel.png) <script>x</script>"
    gate["criteria"][0]["name"] = "judge_score mean | 1 | 2 | yes |\n| forged"
    forged = RoundRecord.model_validate({**ENTRY.model_dump(), "dropped": {"dup | 9\n| forged": 1}, "gate": gate})
    md = round_markdown(forged, PREV, {"base <img src=x>": {"judge_score": 20.0}}, plot="metrics.png",
                        teacher_note="<b>stand-in</b>")
    page = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    assert "<script" not in page and "<b>" not in page and page.count("<img") == 1, "only the plot"
    assert "<td>forged" not in page and "<th>base &lt;img src=x&gt;</th>" in page


def test_an_in_progress_summary_never_contradicts_the_last_finished_one(tmp_path):
    """Issue 28, point 16: during a re-run summary.json read passed: false, final_model_dir: null for a
    run that had passed. A round's summary keeps the last finished verdict until the run finishes."""
    import json

    from llamaduo.records import Summary
    from llamaduo.summary import write_summary

    base = dict(name="x", teacher="t", judge="j", student="s")
    write_summary(str(tmp_path), Summary(**base, passed=True, stop_reason="passed", final_model_dir="final_model",
                                         exported_round=1, exported_round_passed=True, rounds=[ENTRY]))
    write_summary(str(tmp_path), Summary(**base, passed=False, stop_reason=None, final_model_dir=None,
                                         rounds=[PREV]), in_progress=True)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["passed"] is True and on_disk["final_model_dir"] == "final_model" and on_disk["exported_round"] == 1
    assert on_disk["stop_reason"] == "passed" and on_disk["in_progress"] is True
    assert [r["round"] for r in on_disk["rounds"]] == [1], "the rounds are the running ones"
    write_summary(str(tmp_path), Summary(**base, passed=False, stop_reason="max_rounds", final_model_dir=None,
                                         rounds=[PREV]))
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["passed"] is False and on_disk["in_progress"] is False, "a finished run says what it found"
    fresh = tmp_path / "fresh"
    write_summary(str(fresh), Summary(**base, passed=False, stop_reason="passed", final_model_dir=None, rounds=[PREV]),
                  in_progress=True)
    on_disk = json.loads((fresh / "summary.json").read_text())
    assert on_disk["stop_reason"] is None and on_disk["passed"] is False, "nothing finished yet: no verdict"
