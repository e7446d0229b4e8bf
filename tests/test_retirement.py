"""Retirement dates of the service and judge models (litellm's model map)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

from llamaduo.retirement import retirement, retirement_lines

MAP = {"gpt-4o-mini": {"deprecation_date": "2027-01-14"}, "gpt-5": {"deprecation_date": "2026-12-11"},
       "claude-x": {}}
TODAY = dt.date(2026, 12, 7)


def test_dates_are_read_with_or_without_the_provider_prefix():
    assert retirement("openai/gpt-4o-mini", TODAY, MAP).days_left == 38
    assert retirement("gpt-4o-mini", TODAY, MAP).date == dt.date(2027, 1, 14)
    assert retirement("claude-x", TODAY, MAP) is None and retirement("unknown/m", TODAY, MAP) is None


def test_lines_name_each_role_once_and_warn_inside_the_window():
    lines = retirement_lines({"service": "openai/gpt-4o-mini", "judge": "openai/gpt-5"}, standin="s", today=TODAY,
                             warn_days=30, model_map=MAP)
    assert lines[0] == "the service model openai/gpt-4o-mini retires on 2027-01-14 (38 days left)"
    assert lines[1].startswith("the judge model openai/gpt-5 retires on 2026-12-11 (4 days left) — inside")
    assert retirement_lines({"service": "s", "judge": "s"}, standin="s", today=TODAY, model_map=MAP) == []
    gone = retirement_lines({"service": "gpt-5"}, standin="s", today=dt.date(2027, 1, 1), model_map=MAP)
    assert gone == ["the service model gpt-5 retired on 2026-12-11 (21 days ago)"]


def test_validate_names_the_real_maps_date_for_gpt_4o_mini(tmp_path):
    """`llamaduo validate` on a config whose service is openai/gpt-4o-mini names 2027-01-14 (litellm's map)."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "validate", str(root / "configs" / "demo.yaml"),
                           "--set", "service.model=openai/gpt-4o-mini", "--set", "service.api_key_env=NO_SUCH_KEY_VAR",
                           "--set", "service.input_cost_per_mtok=0.15", "--set", "service.output_cost_per_mtok=0.6"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NO_SUCH_KEY_VAR": "sk-test"})
    assert "openai/gpt-4o-mini retires on 2027-01-14" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_the_decision_page_names_the_date_and_the_window_is_configurable(tmp_path, monkeypatch):
    from llamaduo.config import config_from_dict
    from llamaduo.decision import render_markdown
    from llamaduo.preflight import teacher_retirement

    cfg = config_from_dict({"data": {"path": "x.jsonl"}, "service": {"model": "openai/gpt-4o-mini"},
                            "decision": {"retirement_warn_days": 400}})
    lines = teacher_retirement(cfg)
    assert len(lines) == 1 and "2027-01-14" in lines[0] and "inside the warning window" in lines[0]
    quiet = teacher_retirement(cfg.model_copy(update={"decision": cfg.decision.model_copy(
        update={"retirement_warn_days": 0})}))
    assert "2027-01-14" in quiet[0] and "warning window" not in quiet[0]
    from tests.test_decision import decide, summary

    page = render_markdown(decide(summary(), {"billing": [80, 90]}).model_copy(update={"retirement": lines}))
    assert "**Teacher retirement**: the service model openai/gpt-4o-mini retires on 2027-01-14" in page
