"""Export: adapter + merged safetensors + a model card with scores, verdict and lineage.

The exported round is the best round that passed its gate (or, when none passed, the best
round, labelled "did not pass"). After merging, a few test items are answered again from
the exported weights (greedy) and compared with the answers that were evaluated.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .config import InferConfig
from .metrics import METRIC_NAMES
from .records import Artifact, ExportCheck, ExportResult, RoundRecord, StudentRef, Summary
from .store import atomic_write_json, atomic_write_text, read_jsonl, staged_dir

CHECK_ITEMS = 3


def check_reproduces(model_dir: Path, items: list[dict], expected: dict[str, str], infer: InferConfig,
                     system_prompt: str | None) -> ExportCheck:
    """Greedy answers of the exported merged model vs the evaluated answers (same prompts)."""
    from .infer import generate_answers

    answers, _ = generate_answers(str(model_dir), None, items, system_prompt=system_prompt,
                                  max_new_tokens=infer.max_new_tokens, batch_size=infer.batch_size, samples=1,
                                  progress=False, backend=infer.backend)
    matched = sum(a[0] == expected.get(it["id"]) for it, a in zip(items, answers))
    return ExportCheck(checked=len(items), matched=matched, reproduces=matched == len(items))


def export_model(root: str | Path, student: StudentRef, best: RoundRecord, card_for, infer: InferConfig,
                 system_prompt: str | None, test: Artifact, answers: Artifact | None, out: str,
                 name: str | None = None) -> ExportResult:
    """`card_for(check)` renders the model card once the reproduction check is known. `llamaduo.json`
    records what `llamaduo serve` needs to answer as in evaluation (system prompt, max new tokens) and
    the run's `name` (the served model id; without it the server reads it from summary.json)."""
    from .models import save_merged
    from .serve import META_FILE, export_metadata

    t0 = time.time()
    root = Path(root)
    adapter_dir = best.adapter.at(root)
    with staged_dir(root / out) as tmp:
        save_merged(student.path, str(adapter_dir), tmp / "merged")
        shutil.copytree(adapter_dir, tmp / "adapter")
        check = ExportCheck(checked=0, matched=0, reproduces=None, note="sampled answers: not comparable")
        if answers is not None and infer.samples_per_prompt == 1:
            items = read_jsonl(test.at(root))[:CHECK_ITEMS]
            expected = {r["id"]: r["answer"] for r in read_jsonl(answers.at(root))}
            check = check_reproduces(tmp / "merged", items, expected, infer, system_prompt)
        atomic_write_json(tmp / META_FILE, export_metadata(
            name=name, system_prompt=system_prompt, max_new_tokens=infer.max_new_tokens, batch_size=infer.batch_size,
            backend=infer.backend, student=student.id, round=best.round))
        atomic_write_text(tmp / "README.md", card_for(check))
    return ExportResult(model=Artifact.of(root, out), check=check, seconds=round(time.time() - t0, 3))


def model_card(summary: Summary, best: RoundRecord | None, teacher_label: str, check: ExportCheck | None = None
               ) -> str:
    verdict = "passed" if best is not None and best.gate.passed else "did not pass"
    lines = [f"# {summary.name}: migrated student", "",
             f"Student `{summary.student}` fine-tuned with LoRA on data synthesized by `{summary.teacher}` "
             f"({teacher_label}).", "",
             f"- Verdict for this model: **{verdict}** the evaluation gate "
             f"(run stop reason: `{summary.stop_reason}`)"]
    if best:
        g = best.gate
        lines += [f"- Exported round: {best.round} ({g.metric} = {g.value}, threshold {g.threshold}; {g.reason})",
                  f"- Training rows: {best.train_rows}"]
    if check is not None:
        lines.append(f"- Reproduction check: {check.matched}/{check.checked} test answers re-generated "
                     f"from `merged/` match the evaluated ones" + (f" ({check.note})" if check.note else ""))
    cols = _metric_cols(summary)
    lines += ["", "## Rounds", "", "| round | train rows | synthetic added | " + " | ".join(cols) + " | gate |",
              "|---" * (4 + len(cols)) + "|"]
    for r in summary.rounds:
        vals = " | ".join(_fmt(r.metrics.get(m)) for m in cols)
        lines.append(f"| {r.round} | {r.train_rows} | {r.synthetic_rows_added} | {vals} | "
                     f"{'pass' if r.gate.passed else 'fail'} |")
    if summary.baselines:
        lines += ["", "## Baselines (same test items, same judge)", "", "| baseline | " + " | ".join(cols) + " |",
                  "|---" * (1 + len(cols)) + "|"]
        for name, m in summary.baselines.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |")
    if best and best.gate.criteria:
        lines += ["", "## Gate criteria (exported round)", "", "| criterion | value | threshold | ok |",
                  "|---|---|---|---|"]
        for c in best.gate.criteria:
            lines.append(f"| {c.name} | {_fmt(c.value)} | {c.threshold:g} | {'yes' if c.passed else 'no'} |")
    lines += ["", *use_it_lines(summary.name), "", "## Layout", "",
              "- `merged/`: full model (safetensors) with tokenizer and chat template",
              "- `adapter/`: the LoRA adapter alone",
              "- `llamaduo.json`: the system prompt and generation settings it was trained and evaluated with",
              "", "## Lineage", "", "```json",
              json.dumps({"data": summary.data.model_dump(),
                          "rounds": [{"round": r.round, "dropped": r.dropped, "service": r.service.model_dump()}
                                     for r in summary.rounds]}, indent=1), "```", ""]
    return "\n".join(lines)


def use_it_lines(name: str) -> list[str]:
    """How an application swaps the service LLM for this model: two lines change."""
    from .serve import DEFAULT_HOST, DEFAULT_PORT, served_model_id, swap_in_lines

    base_url, model = swap_in_lines(served_model_id(name))
    return ["## Use it in place of the service LLM", "",
            "Start the endpoint (OpenAI-compatible, greedy by default, the run's system prompt and chat template):",
            "", "```sh", f"llamaduo serve RUN_DIR --port {DEFAULT_PORT}", "```", "",
            "In the application, change these two lines (HOST:PORT is where `llamaduo serve` listens, "
            f"{DEFAULT_HOST}:{DEFAULT_PORT} by default):", "", "```python",
            "from openai import OpenAI", "", f"client = OpenAI({base_url}, api_key=\"unused\")",
            f"reply = client.chat.completions.create({model}, messages=[{{\"role\": \"user\", \"content\": "
            "\"...\"}])", "```"]


def _metric_cols(summary: Summary) -> list[str]:
    return [c for c in METRIC_NAMES if c != "judge_spread" and any(c in r.metrics for r in summary.rounds)]


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)
