"""Keep secrets out of everything we print, log, store or raise: providers echo keys in errors.

Two nets: the *values* of every variable that can hold a key this process may send (the
configured key variables, the ones litellm reads on its own, Prefect's auth, and any variable
whose name says it is a key), and key *shapes* we recognise even when we do not know the value.
Redact the whole text first, then cut it (`safe_message`): a key that crosses the cut would
otherwise survive as a prefix that neither net recognises any more.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
from urllib.parse import quote

MASK = "[REDACTED]"

# Provider-shaped secrets even when we do not know the value. Lengths are those of real keys
# (short enough to catch them whole, long enough not to eat ordinary identifiers like hf_hub).
_SHAPES = [re.compile(p) for p in (
    r"sk-[A-Za-z0-9_\-]{6,}",  # OpenAI, Anthropic (sk-ant-...), DeepSeek, OpenRouter (sk-or-...)
    r"AIza[0-9A-Za-z_\-]{30,}",  # Google / Gemini API keys
    r"hf_[A-Za-z0-9]{20,}",  # Hugging Face tokens
    r"gsk_[A-Za-z0-9]{20,}",  # Groq
    r"(?:AKIA|ASIA)[0-9A-Z]{16}",  # AWS access key ids (long-lived / session)
    r"(?:xai|pplx|nvapi|glpat)-[A-Za-z0-9_\-]{16,}",  # xAI, Perplexity, NVIDIA, GitLab
    r"(?:ghp|gho|ghu|ghs|github_pat)_[A-Za-z0-9_]{20,}",  # GitHub
    r"r8_[A-Za-z0-9]{20,}",  # Replicate
    r"eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}(?:\.[A-Za-z0-9_\-]*)?",  # JWT-like (header.payload.sig)
)]
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]{8,}")
_KEY_FIELD = re.compile(r"(?i)((?:api[_-]?key|x-api-key|secret|token|password)[\"']?\s*[=:]\s*[\"']?)[^\s\"',;}]{8,}")
_API_KEY_WORDS = re.compile(r"(?i)(api[_-]?key[\"'=:\s]+)[A-Za-z0-9._\-]{8,}")  # "api key XXXX", "api_key=XXXX"
_BASIC = re.compile(r"(?i)(basic\s+)[A-Za-z0-9+/_\-]{8,}=*")  # HTTP Basic: base64 of "user:key"
# Credentials in a URL's authority: scheme://user:password@host, scheme://:password@host.
_URL_AUTH = re.compile(r"//[^/\s:@]*:[^/\s@]+@")
MIN_ENCODED_LEN = 8  # a base64 form shorter than this would mask ordinary words

# Variables litellm (and boto3, huggingface_hub, Prefect) read on their own: their values can be
# sent without our config naming them. The suffix rule below catches the rest.
KNOWN_KEY_VARS = (
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "GROQ_API_KEY", "HF_TOKEN",
    "HUGGINGFACE_API_KEY", "HUGGING_FACE_HUB_TOKEN", "AZURE_API_KEY", "AZURE_OPENAI_API_KEY", "MISTRAL_API_KEY",
    "COHERE_API_KEY", "CO_API_KEY", "TOGETHERAI_API_KEY", "TOGETHER_API_KEY", "DEEPSEEK_API_KEY", "XAI_API_KEY",
    "OPENROUTER_API_KEY", "PERPLEXITYAI_API_KEY", "FIREWORKS_AI_API_KEY", "REPLICATE_API_KEY", "VERTEXAI_CREDENTIALS",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_BEARER_TOKEN_BEDROCK",
    "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_KEY",
)
_SECRET_NAME = re.compile(r"(?:_API_KEY|_KEY|_TOKEN|_SECRET|_SECRET_KEY|_PASSWORD|_AUTH_STRING|_CREDENTIALS)$", re.I)
MIN_DISCOVERED_LEN = 8  # shorter values of name-matched variables ("1", "true") are not secrets


def _variants(value: str) -> set[str]:
    """The forms a value takes in error text: as is, stripped, JSON-escaped (also with `\\/`, as
    PHP and some gateways write it), URL-quoted, and base64-encoded inside a longer string (an
    HTTP Basic header holds base64("user:" + key)). Case is handled by the match itself."""
    stripped = value.strip()
    escaped = json.dumps(stripped)[1:-1]
    forms = {value, stripped, escaped, escaped.replace("/", "\\/"), quote(stripped, safe="")}
    return {v for v in forms | base64_cores(stripped) if v}


def base64_cores(value: str) -> set[str]:
    """The base64 characters that depend on `value` alone, wherever it sits in the encoded text.

    A string embedded at byte offset o encodes differently for each o mod 3, and its first and last
    characters share bits with its neighbours; the characters wholly inside the value are the same
    for every string with the value at that alignment. Standard and URL-safe alphabets."""
    raw = value.encode("utf-8")
    out = set()
    for align in range(3):
        encoded = base64.b64encode(b"\0" * align + raw).decode("ascii")
        first = -(-8 * align // 6)  # first character whose 6 bits all lie inside the value
        last = (8 * (align + len(raw))) // 6  # one past the last such character
        core = encoded[first:last]
        if len(core) >= MIN_ENCODED_LEN:
            out |= {core, core.replace("+", "-").replace("/", "_")}
    return out


def env_secrets() -> set[str]:
    """Values of the variables that can hold a key this process sends (known names + suffix rule)."""
    out: set[str] = set()
    for name, value in os.environ.items():
        if value and len(value.strip()) >= MIN_DISCOVERED_LEN and (name in KNOWN_KEY_VARS or _SECRET_NAME.search(name)):
            out |= {value, value.strip()}
    return out


def secret_values(env_names: list[str | None] = ()) -> list[str]:
    """Values of the configured key variables and of every key-holding variable that is set, longest first."""
    values = set(env_secrets())
    for name in env_names:
        value = os.environ.get(name) if name else None
        if value and len(value.strip()) >= 4:
            values |= {value, value.strip()}
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


@functools.lru_cache(maxsize=64)
def _known_values(values: frozenset[str]) -> re.Pattern | None:
    """One case-insensitive pattern for every form of the known values, longest first (a provider
    may echo a key lower- or upper-cased)."""
    forms = set()
    for value in values:
        if len(value) >= 4:
            forms |= _variants(value)
    forms = sorted((f for f in forms if len(f) >= 4), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, forms)), re.IGNORECASE) if forms else None


def redact(text: str, secrets: list[str] = ()) -> str:
    """`text` with every known key value (in any case, escaped, quoted or base64-encoded), every
    key-shaped string and every credential in a URL replaced by MASK."""
    known = _known_values(frozenset(secrets) | frozenset(env_secrets()))
    if known is not None:
        text = known.sub(MASK, text)
    for shape in _SHAPES:
        text = shape.sub(MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    text = _BASIC.sub(lambda m: m.group(1) + MASK, text)
    text = _KEY_FIELD.sub(lambda m: m.group(1) + MASK, text)
    text = _API_KEY_WORDS.sub(lambda m: m.group(1) + MASK, text)
    return redact_url(text)


def redact_url(text: str) -> str:
    """`text` with the user and password of every URL in it masked (`s3://[REDACTED]@bucket/run`):
    a run directory's address is printed, logged and written into summaries."""
    return _URL_AUTH.sub("//" + MASK + "@", text)


def strip_credentials(url: str) -> str:
    """A URL without its user and password (the place, for records others read: promoted.json); keys
    come from the environment of whoever reads it. Paths are returned as they are."""
    from urllib.parse import urlsplit, urlunsplit

    if "://" not in url:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def safe_message(text: str, limit: int | None = 300, secrets: list[str] = ()) -> str:
    """Redacted, then cut to `limit` characters (an ellipsis marks the cut). Redacting first is
    the point: a key crossing the cut would leave a prefix no rule recognises."""
    text = redact(str(text), secrets)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return text
