"""Parse service replies: find the JSON in fenced or chatty text, repair it, validate it.

Parsers raise ValueError on anything they cannot turn into the expected shape (wrong
types included), so the caller can re-ask with the error and count parse failures apart
from low scores. The pydantic models double as the JSON schemas sent as structured
output where the provider supports it.
"""

from __future__ import annotations

import json
import re

import json_repair
from pydantic import BaseModel, Field, ValidationError, field_validator

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> object:
    """The first JSON object in `text`: fenced block, bare object, or repairable near-JSON."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty reply")
    fenced = [m.group(1).strip() for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    braced = [text[start:end + 1] if end > start else text[start:]] if start != -1 else []
    for cand in fenced + [text.strip()] + braced:  # strict parses first
        try:
            return json.loads(cand)
        except json.JSONDecodeError:
            pass
    # Repair only the JSON-looking parts, never the prose around them.
    for cand in (fenced + braced) or [text.strip()]:
        repaired = json_repair.loads(cand)
        if isinstance(repaired, (dict, list)) and repaired:
            return repaired
    raise ValueError("no JSON object found")


class SynthPair(BaseModel):
    instruction: str = Field(min_length=1)
    response: str = Field(min_length=1)

    @field_validator("instruction", "response", mode="before")
    @classmethod
    def _strip(cls, v):
        if not isinstance(v, str):
            raise ValueError("must be a string")
        return v.strip()


def parse_synth_reply(text: str) -> list[dict]:
    """`{"contents": [{"instruction", "response"}, ...]}` -> valid pairs; invalid items are kept
    as {"invalid": reason} so curation can count them."""
    obj = extract_json(text)
    items = obj.get("contents") if isinstance(obj, dict) else obj
    if not isinstance(items, list):
        raise ValueError("expected a 'contents' list")
    out: list[dict] = []
    for item in items:
        try:
            out.append(SynthPair.model_validate(item).model_dump())
        except ValidationError as exc:
            out.append({"invalid": exc.errors()[0]["msg"], "raw": item if isinstance(item, (dict, str)) else str(item)})
    if not out:
        raise ValueError("'contents' is empty")
    return out


class _Assessment(BaseModel):
    score: int = Field(ge=1, le=100)
    reason: str = ""

    @field_validator("score", mode="before")
    @classmethod
    def _int_score(cls, v):
        if isinstance(v, bool):
            raise ValueError("score must be an integer")
        if isinstance(v, str):
            v = v.strip().split("/")[0].strip()
        if not isinstance(v, (int, float, str)):
            raise ValueError(f"score must be a number from 1 to 100, got {type(v).__name__}")
        try:
            f = float(v)
        except ValueError:
            raise ValueError(f"score must be a number from 1 to 100, got {v!r}"[:120]) from None
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


def parse_judge_reply(text: str) -> dict:
    """The paper's judge JSON -> {"similarity": int, "precision": int}; scores must be 1–100."""
    obj = extract_json(text)
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    try:
        v = JudgeVerdict.model_validate(obj)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ValueError(f"{'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    return {"similarity": v.similarity_assessment.score, "precision": v.precision_assessment.score,
            "reason": "; ".join(r for r in (v.similarity_assessment.reason, v.precision_assessment.reason) if r)[:300]}
