"""Parse service replies: find the JSON in fenced or chatty text, repair it, validate it.

Parsers raise ValueError on anything they cannot turn into the expected shape (wrong
types included), so the caller can re-ask with the error and count parse failures apart
from low scores. A reply may hold several JSON objects (a format example, JSON quoted from
the answer, the verdict): parsers look at every object in it and take the one that
validates — never simply the first. The pydantic models double as the JSON schemas sent as
structured output where the provider supports it.
"""

from __future__ import annotations

import json
import re

import json_repair
from pydantic import BaseModel, Field, ValidationError, field_validator

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


_SURROGATE = re.compile("[\ud800-\udfff]")


def well_formed(text: str) -> str:
    """Text as well-formed Unicode: a lone surrogate (JSON allows the escape "\\ud800", UTF-8
    cannot encode it) becomes U+FFFD, so a reply can be cached, hashed and written like any other."""
    return _SURROGATE.sub("\ufffd", text)


def _well_formed_value(obj):
    """A decoded JSON value with every string (keys too) well-formed: the escape "\\ud800" inside a
    reply's JSON decodes to a lone surrogate that no output file could be written with."""
    if isinstance(obj, str):
        return well_formed(obj)
    if isinstance(obj, list):
        return [_well_formed_value(v) for v in obj]
    if isinstance(obj, dict):
        return {_well_formed_value(k): _well_formed_value(v) for k, v in obj.items()}
    return obj


def _strict_objects(text: str) -> list:
    """Every JSON object or array that parses strictly at some `{` or `[` of `text`, nested ones
    included, in order of position."""
    found = []
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                found.append(_DECODER.raw_decode(text, i)[0])
            except ValueError:
                pass
    return found


def _brace_segments(text: str) -> list[str]:
    """Top-level `{...}` spans (double-quoted strings respected); an unclosed one runs to the end."""
    segments, depth, start, in_str, escaped = [], 0, 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"' and depth:
            in_str = True
        elif ch == "{":
            start = i if depth == 0 else start
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                segments.append(text[start:i + 1])
    if depth:
        segments.append(text[start:])
    return segments


def json_candidates(text: str) -> tuple[list, list]:
    """(objects that parse strictly, in order of position; repaired near-JSON objects). Repair
    only ever sees the JSON-looking parts (fenced blocks, brace spans), never the prose."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty reply")
    strict = _strict_objects(text)
    repaired = []
    for part in [m.group(1).strip() for m in _FENCE.finditer(text)] + _brace_segments(text):
        try:
            obj = json_repair.loads(part)
        except Exception:  # noqa: BLE001 - an unrepairable part is simply not a candidate
            continue
        if isinstance(obj, (dict, list)) and obj and obj not in strict:
            repaired.append(obj)
    return [_well_formed_value(o) for o in strict], [_well_formed_value(o) for o in repaired]


class SynthPair(BaseModel):
    instruction: str = Field(min_length=1)
    response: str = Field(min_length=1)

    @field_validator("instruction", "response", mode="before")
    @classmethod
    def _strip(cls, v):
        if not isinstance(v, str):
            raise ValueError("must be a string")
        return v.strip()


def _synth_pairs(items: list) -> list[dict]:
    out: list[dict] = []
    for item in items:
        try:
            out.append(SynthPair.model_validate(item).model_dump())
        except ValidationError as exc:
            out.append({"invalid": exc.errors()[0]["msg"], "raw": item if isinstance(item, (dict, str)) else str(item)})
    return out


def _contents(obj) -> list | None:
    items = obj.get("contents") if isinstance(obj, dict) else obj
    return items if isinstance(items, list) and items else None


def parse_synth_reply(text: str) -> list[dict]:
    """`{"contents": [{"instruction", "response"}, ...]}` -> pairs; invalid items are kept as
    {"invalid": reason} so curation can count them. Of several JSON objects in a reply the one
    with the most valid pairs wins (a later one on a tie: a format example comes first)."""
    strict, repaired = json_candidates(text)
    for pool in (strict, repaired):
        best: tuple[int, list[dict]] | None = None
        for obj in pool:
            items = _contents(obj)
            if items is None:
                continue
            pairs = _synth_pairs(items)
            valid = sum("invalid" not in p for p in pairs)
            if valid and (best is None or valid >= best[0]):
                best = (valid, pairs)
        if best is not None:
            return best[1]
    # No valid pair anywhere: the reply's `contents` (all invalid) still counts in curation.
    for obj in strict + repaired:
        if isinstance(obj, dict) and _contents(obj) is not None:
            return _synth_pairs(obj["contents"])
    if any(isinstance(o, dict) and "contents" in o for o in strict + repaired):
        raise ValueError("'contents' is empty")
    raise ValueError("expected a 'contents' list")


def _score_from_text(v: str) -> float:
    """'85' -> 85; 'k/n' (a score on its own scale) -> k on 1-100 when that is a whole number."""
    s = v.strip()
    if "/" not in s:
        return float(s)
    num, _, den = s.partition("/")
    k, n = float(num), float(den)
    if not n > 0:
        raise ValueError(f"score {v!r} has no usable scale")
    scaled = k * 100 / n
    if abs(scaled - round(scaled)) > 1e-9:
        raise ValueError(f"score {v!r} is not a whole number on the 1-100 scale")
    return float(round(scaled))


class _Assessment(BaseModel):
    score: int = Field(ge=1, le=100)
    reason: str = ""

    @field_validator("score", mode="before")
    @classmethod
    def _int_score(cls, v):
        if isinstance(v, bool):
            raise ValueError("score must be an integer")
        if not isinstance(v, (int, float, str)):
            raise ValueError(f"score must be a number from 1 to 100, got {type(v).__name__}")
        try:
            f = _score_from_text(v) if isinstance(v, str) else float(v)
        except ValueError as exc:
            msg = str(exc) if str(exc).startswith("score") else f"score must be a number from 1 to 100, got {v!r}"
            raise ValueError(msg) from None  # cut later, after redaction (service.safe_message)
        if f != f or f in (float("inf"), float("-inf")):
            raise ValueError("score must be a finite number")
        if f != int(f):
            raise ValueError("score must be an integer")
        return int(f)

    @field_validator("reason", mode="before")
    @classmethod
    def _reason(cls, v):
        return "" if v is None else str(v)


class JudgeVerdict(BaseModel):
    similarity_assessment: _Assessment
    precision_assessment: _Assessment


class SynthReply(BaseModel):
    contents: list[SynthPair]


JUDGE_SCHEMA = JudgeVerdict.model_json_schema()
SYNTH_SCHEMA = SynthReply.model_json_schema()
_VERDICT_KEYS = ("similarity_assessment", "precision_assessment")


def _validation_message(exc: ValidationError) -> str:
    e = exc.errors()[0]
    return f"{'.'.join(map(str, e['loc']))}: {e['msg']}"


def parse_judge_reply(text: str) -> dict:
    """The paper's judge JSON -> {"similarity": int, "precision": int}; scores must be 1–100.
    The verdict is the object in the reply that validates; two valid verdicts that disagree make
    the reply ambiguous (ValueError: re-asked), whatever comes first. Strict and repaired objects
    are one pool: a strict verdict quoted from the answer must not outvote the judge's own verdict
    written with a trailing comma or single quotes."""
    strict, repaired = json_candidates(text)
    error = None
    verdicts: list[JudgeVerdict] = []
    for obj in strict + repaired:  # strict first: on agreement its reason is kept
        if not isinstance(obj, dict):
            continue
        try:
            verdicts.append(JudgeVerdict.model_validate(obj))
        except ValidationError as exc:
            # Report the error of the object that looks most like a verdict.
            if error is None or (any(k in obj for k in _VERDICT_KEYS) and not error[0]):
                error = (any(k in obj for k in _VERDICT_KEYS), _validation_message(exc))
    if verdicts:
        scores = {(v.similarity_assessment.score, v.precision_assessment.score) for v in verdicts}
        if len(scores) > 1:
            raise ValueError(f"ambiguous reply: {len(scores)} verdicts that disagree "
                             f"({', '.join(f'{s}/{p}' for s, p in sorted(scores))}); give exactly one")
        v = verdicts[0]
        return {"similarity": v.similarity_assessment.score, "precision": v.precision_assessment.score,
                "reason": "; ".join(r for r in (v.similarity_assessment.reason, v.precision_assessment.reason)
                                    if r)[:300]}
    if error is not None:
        raise ValueError(error[1])
    if strict or repaired:
        raise ValueError("expected a JSON object")
    raise ValueError("no JSON object found")
