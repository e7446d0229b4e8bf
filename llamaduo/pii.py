"""What is removed from captured exchanges before they are written: e-mail addresses, phone numbers,
the operator's own patterns, and every key this process knows (llamaduo.redact)."""

from __future__ import annotations

import re

from .redact import redact

# Deliberately broad: a false positive costs a word of training text, a miss leaks a customer's data.
BUILTIN = {
    "email": (re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+"), "[EMAIL]"),
    # +country and 7-15 digits (E.164's longest), or 9-15 digits, with spaces, dots, dashes, parentheses
    "phone": (re.compile(r"(?<![\w+])(?:\+\d(?:[\s().\-/]{0,3}\d){6,14}|\(?\d(?:[\s().\-/]{0,3}\d){8,14})(?!\w)"),
              "[PHONE]"),
}
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}")  # 2026-12-07 10:30 is a time, not a number to call
MASK = "[REDACTED]"


class PiiRedactor:
    def __init__(self, builtin: list[str] = ("email", "phone"), patterns: list[str] = ()):
        self.rules = [BUILTIN[name] for name in builtin] + [(re.compile(p), MASK) for p in patterns]

    def text(self, value: str) -> str:
        value = redact(value)  # keys first: a key can look like an e-mail address's local part
        for pattern, mask in self.rules:
            value = pattern.sub(lambda m, mask=mask, p=pattern: m.group(0) if p is BUILTIN["phone"][0]
                                and _DATE.match(m.group(0)) else mask, value)
        return value

    def value(self, obj):
        """Every string inside a JSON value (messages, tool calls), keys of mappings left as they are."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, list):
            return [self.value(v) for v in obj]
        if isinstance(obj, dict):
            return {k: self.value(v) for k, v in obj.items()}
        return obj
