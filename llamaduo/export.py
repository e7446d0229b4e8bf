"""Export: adapter + merged safetensors + a model card with scores and lineage."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .store import atomic_write_text, replace_dir


def export_model(base_model: str, adapter_dir: str, dest: str | Path, card: str) -> Path:
    from .infer import load_student
    from .models import load_tokenizer

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        model = load_student(base_model, adapter_dir).to("cpu")
        model.save_pretrained(tmp / "merged", safe_serialization=True)
        load_tokenizer(adapter_dir).save_pretrained(tmp / "merged")
        shutil.copytree(adapter_dir, tmp / "adapter")
        atomic_write_text(tmp / "README.md", card)
        return replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_card(name: str, summary: dict, best: dict | None, student: str, teacher: str, teacher_label: str) -> str:
    lines = [f"# {name}: migrated student", "",
             f"Student `{student}` fine-tuned with LoRA on data synthesized by `{teacher}` ({teacher_label}).", "",
             f"- Gate passed: **{summary['passed']}** (stop reason: `{summary['stop_reason']}`)"]
    if best:
        g = best["gate"]
        lines += [f"- Exported round: {best['round']} ({g['metric']} = {g['value']}, threshold {g['threshold']})",
                  f"- Training rows: {best['train_rows']}", ""]
    lines += ["## Rounds", "", "| round | train rows | synthetic added | " + " | ".join(_metric_cols(summary)) + " | gate |",
              "|---" * (4 + len(_metric_cols(summary))) + "|"]
    for r in summary["rounds"]:
        vals = " | ".join(_fmt(r["metrics"].get(m)) for m in _metric_cols(summary))
        lines.append(f"| {r['round']} | {r['train_rows']} | {r['synthetic_rows_added']} | {vals} | "
                     f"{'pass' if r['gate']['passed'] else 'fail'} |")
    if summary.get("baselines"):
        lines += ["", "## Baselines (same test items, same judge)", "", "| baseline | " +
                  " | ".join(_metric_cols(summary)) + " |", "|---" * (1 + len(_metric_cols(summary))) + "|"]
        for name, m in summary["baselines"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(m.get(c)) for c in _metric_cols(summary)) + " |")
    if best and best["gate"].get("criteria"):
        lines += ["", "## Gate criteria (exported round)", "", "| criterion | value | threshold | ok |",
                  "|---|---|---|---|"]
        for c in best["gate"]["criteria"]:
            lines.append(f"| {c['name']} | {_fmt(c['value'])} | {c['threshold']:g} | {'yes' if c['passed'] else 'no'} |")
    lines += ["", "## Layout", "", "- `merged/`: full model (safetensors) with tokenizer and chat template",
              "- `adapter/`: the LoRA adapter alone", "", "## Lineage", "", "```json",
              json.dumps({"rounds": [{"round": r["round"], "dropped": r["dropped"], "service": r["service"]}
                                     for r in summary["rounds"]]}, indent=1), "```", ""]
    return "\n".join(lines)


def _metric_cols(summary: dict) -> list[str]:
    cols = ["judge_score", "judge_similarity", "judge_precision", "rougeL", "exact_match", "embedding_cosine"]
    return [c for c in cols if any(c in r["metrics"] for r in summary["rounds"])]


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)
