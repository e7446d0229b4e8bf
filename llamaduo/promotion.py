"""Champion and challenger: which model serves, and whether a new run's student replaces it.

    PROMOTE_LOCATION/promoted.json            the model in service (the champion)
    PROMOTE_LOCATION/history/<time>.json      every promotion, never rewritten

`promote.location` is a folder or a URL. A run that starts while a champion exists freezes it in its
own directory (`champion/champion.json` and the champion's adapter in `champion/adapter/`, checked
against the sha256 its export recorded), so a re-run compares with the same champion. The run
warm-starts from that adapter and, once its gate passes, both are judged on the run's test split; the
challenger is promoted only when the paired bootstrap interval of its per-item differences lies above
`promote.min_gain` (better beyond noise). Without a champion, a passing run is promoted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

from .errors import InputError
from .location import canonical_location, is_url

PROMOTED = "promoted.json"
HISTORY = "history"
CHAMPION_DIR = "champion"
CHAMPION_RECORD = f"{CHAMPION_DIR}/champion.json"
CHAMPION_ADAPTER = f"{CHAMPION_DIR}/adapter"
EVENT = "llamaduo.model.promoted"


class PromotionStore:
    def __init__(self, location: str | Path, field: str = "promote.location"):
        self.location = canonical_location(location, field=field)
        self.field = field
        if is_url(self.location) and not self.location.startswith("file://"):
            import fsspec

            self.fs, self.base = fsspec.core.url_to_fs(self.location)
            self.base = self.base.rstrip("/")
            self.local: Path | None = None
        else:
            self.local = Path(self.location.removeprefix("file://"))
            self.fs = self.base = None

    @property
    def shown(self) -> str:
        from .redact import redact_url

        return redact_url(self.location)

    def read(self) -> dict | None:
        """The champion's record, or None when nothing was promoted yet."""
        try:
            if self.local is not None:
                path = self.local / PROMOTED
                data = path.read_bytes() if path.is_file() else None
            else:
                self.fs.invalidate_cache()
                data = self.fs.cat_file(f"{self.base}/{PROMOTED}") if self.fs.exists(f"{self.base}/{PROMOTED}") else None
        except OSError as exc:
            raise InputError(f"cannot read {self.shown}/{PROMOTED} ({type(exc).__name__})", field=self.field) from None
        if data is None:
            return None
        try:
            record = json.loads(data)
        except ValueError:
            raise InputError("not JSON", file=f"{self.shown}/{PROMOTED}") from None
        for key in ("run", "model_sha256", "student"):
            if not isinstance(record.get(key), str):
                raise InputError("missing or not text", file=f"{self.shown}/{PROMOTED}", field=key)
        return record

    def promote(self, record: dict, *, champion_sha: str | None) -> tuple[dict | None, str | None]:
        """Write `record` unless promoted.json moved on since the run froze its champion (`champion_sha`,
        None: nothing was promoted then): a re-run of an old run must not push back a model that a later
        run replaced. Returns (the record written or already in force for this model, None) or (None, why
        nothing was written)."""
        current = self.read()
        if current is not None and current["model_sha256"] == record["model_sha256"]:
            return current, None  # this run's model is already the champion (a re-run): nothing to write
        current_sha = current["model_sha256"] if current else None
        if current_sha != champion_sha:
            return None, (f"another model was promoted since this run compared with its champion ("
                             f"{current.get('run') if current else 'none'}): start a new run to compare with it")
        self.write(record)
        return record, None

    def write(self, record: dict) -> str:
        """The history entry first, then promoted.json (each whole: a rename, or one PUT)."""
        data = (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode()
        stamp = record["time"].replace(":", "").replace("-", "")
        self._put(f"{HISTORY}/{stamp}-{uuid.uuid4().hex[:8]}.json", data)
        self._put(PROMOTED, data)
        return f"{self.shown}/{PROMOTED}"

    def _put(self, rel: str, data: bytes) -> None:
        if self.local is not None:
            from .store import atomic_write_bytes

            atomic_write_bytes(self.local / rel, data)
        else:
            self.fs.pipe_file(f"{self.base}/{rel}", data)


def model_sha256(final_model_dir: Path) -> str:
    """The export's identity: the sha256 of its llamaduo.json, which records the sha256 of every file."""
    return hashlib.sha256((final_model_dir / "llamaduo.json").read_bytes()).hexdigest()


def promotion_record(*, run: str, final_model: Path, student: str, name: str, verdict: dict,
                     versus: dict | None, previous: dict | None) -> dict:
    return {"run": run, "model_dir": f"{run.rstrip('/')}/final_model", "model_sha256": model_sha256(final_model),
            "student": student, "name": name, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "verdict": verdict, "versus_champion": versus,
            "previous": {k: previous.get(k) for k in ("run", "model_sha256", "time")} if previous else None}


def freeze_champion(cfg, run_local: Path, *, pull=None, push=None) -> dict | None:
    """The champion this run compares with: frozen in the run directory the first time (its record and
    adapter copied, the adapter checked against its export's hashes), read from there after. None
    without `promote.location` or before the first promotion."""
    if not cfg.promote.location:
        return None
    if pull is not None:
        pull(CHAMPION_DIR)
    frozen = run_local / CHAMPION_RECORD
    if frozen.is_file():
        return json.loads(frozen.read_text())
    record = PromotionStore(cfg.promote.location).read()
    if record is None:
        return None
    if record["student"] != cfg.student.model:
        raise InputError(f"the champion in {PromotionStore(cfg.promote.location).shown} was trained from "
                         f"{record['student']!r}, this run's student is {cfg.student.model!r}: they cannot be "
                         "compared on one base (use a new promote.location for the new student)",
                         field="student.model")
    _copy_adapter(record, run_local / CHAMPION_ADAPTER)
    from .store import atomic_write_json

    atomic_write_json(frozen, record)  # last: a record means a whole, checked copy
    if push is not None:
        push(CHAMPION_DIR)
    return record


def _copy_adapter(record: dict, dest: Path) -> None:
    from .runstore import RunStore
    from .store import sha256_path

    src = RunStore(record["run"])
    try:
        src.pull("final_model/llamaduo.json")
        src.pull("final_model/adapter")
    except Exception as exc:  # noqa: BLE001 - the champion's run directory is unreachable
        raise InputError(f"cannot read the champion's run directory ({type(exc).__name__})",
                         field="promote.location") from None
    final = src.local / "final_model"
    if not (final / "llamaduo.json").is_file() or model_sha256(final) != record["model_sha256"]:
        raise InputError("the champion's final_model/llamaduo.json is missing or not the one promoted "
                         f"(run {record['run']}): its run directory changed since", field="promote.location")
    files = json.loads((final / "llamaduo.json").read_text()).get("files") or {}
    adapter_files = {rel: digest for rel, digest in files.items() if rel.startswith("adapter/")}
    if not adapter_files:
        raise InputError("the champion's export has no adapter/", field="promote.location")
    tmp = dest.parent / f".adapter-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for rel, digest in adapter_files.items():
            if not (final / rel).is_file() or sha256_path(final / rel) != digest:
                raise InputError(f"the champion's {rel} is not the file its export recorded",
                                 field="promote.location")
            shutil.copy2(final / rel, tmp / rel.removeprefix("adapter/"))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def decide_promotion(*, passed: bool, challenger: dict[str, float], champion: dict[str, float] | None,
                     has_champion: bool, min_gain: float, metric: str) -> dict:
    """Promote or keep, with the numbers that decided it. `challenger`/`champion`: per-item scores on the
    same test split (item id -> score)."""
    from .stats import paired_difference

    out = {"metric": metric, "min_gain": min_gain, "challenger_mean": _mean(challenger),
           "champion_mean": _mean(champion) if champion is not None else None,
           "difference": None, "difference_ci95": None, "items": None}
    if not passed:
        return {**out, "promote": False, "reason": "the challenger did not pass the gate"}
    if not has_champion:
        return {**out, "promote": True, "reason": "first promoted model (it passed the gate)"}
    if not champion:
        return {**out, "promote": False, "reason": "the champion could not be judged on this test split: nothing "
                "to compare with (kept)"}
    diff, ci = paired_difference(challenger, champion)
    both = sum(1 for k in challenger if k in champion)
    out.update(difference=diff, difference_ci95=list(ci) if ci else None, items=both)
    if diff is None:
        return {**out, "promote": False, "reason": "no test item judged for both: nothing to compare (kept)"}
    shown = f"{diff:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}] on {both} items"
    if ci[0] > min_gain:
        return {**out, "promote": True, "reason": f"better than the champion beyond noise: {metric} {shown}"}
    return {**out, "promote": False, "reason": f"not better than the champion beyond noise: {metric} {shown} "
            f"(the interval must lie above {min_gain:g}); the champion stays"}


def _mean(scores: dict[str, float] | None) -> float | None:
    return round(sum(scores.values()) / len(scores), 4) if scores else None
