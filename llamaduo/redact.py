"""Keep secrets out of everything we print, log, store or raise: providers echo keys in errors."""

from __future__ import annotations

import os
import re

# Provider-shaped secrets even when we do not know the value: OpenAI/Anthropic style keys,
# bearer tokens, basic-auth strings in URLs.
_SHAPES = [re.compile(p) for p in (r"sk-[A-Za-z0-9_\-]{6,}", r"(?i)bearer\s+[A-Za-z0-9._\-]{8,}",
                                   r"(?i)(api[_-]?key[\"'=:\s]+)[A-Za-z0-9._\-]{8,}", r"//[^/\s:@]+:[^/\s@]+@")]
_KEY_VARS = ("PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_KEY")
MASK = "[REDACTED]"


def secret_values(env_names: list[str | None] = ()) -> list[str]:
    """Values of the configured key variables (and Prefect's auth) that are set, longest first."""
    names = [n for n in env_names if n] + list(_KEY_VARS)
    values = {os.environ.get(n) for n in names}
    return sorted((v for v in values if v and len(v) >= 4), key=len, reverse=True)


def redact(text: str, secrets: list[str] = ()) -> str:
    for value in secrets:
        text = text.replace(value, MASK)
    for shape in _SHAPES:
        text = shape.sub(lambda m: (m.group(1) if m.lastindex else "") + MASK if not m.group(0).startswith("//")
                         else "//" + MASK + "@", text)
    return text
