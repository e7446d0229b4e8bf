"""The decision page: the exported student measured through `llamaduo serve`, then decision.json,
decision.md and a Prefect markdown artifact (the metrics plot inlined: a browser cannot load a
file path of the worker)."""

from __future__ import annotations

import base64
import logging
from pathlib import Path


from llamaduo.config import Endpoint, GateConfig, InferConfig, ServiceConfig
from llamaduo.decision import build_decision, load_judged, render_markdown, service_call_records, write_decision
from llamaduo.records import Artifact, Decision, FormatRow, Summary
from llamaduo.redact import safe_message
from llamaduo.runstore import RunStore
from llamaduo.store import read_jsonl

from ._stage import StageTraits, stage

log = logging.getLogger("llamaduo.decision")


def existing_artifact(location: str, rel: str) -> Artifact | None:
    """`rel` of the run directory (folder or URL) as an artifact, None when it is not there."""
    store = RunStore(location)
    return Artifact.of(store.local, rel) if store.pull(rel) else None


def measure(model_dir: Path, items: list[dict], system_prompt: str | None, infer_cfg: InferConfig):
    """(LatencyStats, "") or (None, why not). A failed measurement is reported on the page, not a
    failed run: the model is trained and exported by now."""
    try:
        from llamaduo.latency import measure_student
    except ImportError as exc:
        return None, f"llamaduo.latency is not available ({exc})"
    try:
        return measure_student(model_dir, [it["instruction"] for it in items], system_prompt=system_prompt,
                               batch_size=infer_cfg.batch_size, max_new_tokens=infer_cfg.max_new_tokens), ""
    except Exception as exc:  # noqa: BLE001 - any failure of the endpoint: said on the page and in the log
        why = safe_message(f"measurement failed: {type(exc).__name__}: {exc}", 500)
        log.warning("student latency: %s", why)
        return None, why


@stage("decision", StageTraits(kind="gpu", calls="endpoint"))  # serving the student uses the accelerator
def decide(root: str, summary: Summary, gate: GateConfig, endpoint: Endpoint, limits: ServiceConfig,
           infer_cfg: InferConfig, system_prompt: str | None, test: Artifact, model: Artifact | None,
           service_judged: Artifact | None, plot: Artifact | None, prices: dict[str, float | None],
           usd_per_hour: float | None, min_agreement: float | None, out: str,
           formats: list[FormatRow] | None = None, retirement: list[str] | None = None) -> Decision:
    """`model`: the export (final_model/), None when nothing was exported (a "not yet" page without
    latency). `endpoint` is the service's: its recorded baseline calls give the service latency and
    tokens (and, as a parameter of that name, bring the reply cache to a scratch copy). `prices`: its
    `*_cost_per_mtok`, a parameter of their own because an endpoint's cache key leaves them out
    (operational for every other stage) while they decide this page."""
    from prefect.artifacts import create_markdown_artifact

    items = read_jsonl(test.at(root))
    latency, note = measure(model.at(root), items, system_prompt, infer_cfg) if model else (None, "no exported model")
    records = (service_call_records(root, endpoint, limits, infer_cfg, items, system_prompt)
               if service_judged is not None else [])
    decision = build_decision(summary=summary, gate=gate,
                              judged=load_judged(root, summary, service_judged.path if service_judged else None),
                              categories={it["id"]: it.get("category") for it in items},
                              service_endpoint=endpoint.model_copy(update=prices),
                              student_latency=latency, student_latency_note=note, service_records=records,
                              usd_per_hour=usd_per_hour, min_agreement=min_agreement, formats=formats or [])
    decision = decision.model_copy(update={"retirement": retirement or []})
    write_decision(root, decision, plot_rel=plot.path if plot else None)
    inline = ("data:image/png;base64," + base64.b64encode(plot.at(root).read_bytes()).decode()) if plot else None
    create_markdown_artifact(markdown=render_markdown(decision, plot=inline), key="decision",
                             description=f"Decision: {decision.verdict_line}"[:500])
    return decision
