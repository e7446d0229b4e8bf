"""Prompt templates: Jinja2, inline text or a file path; defaults are the paper's prompts."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import jinja2

from .errors import InputError
from .store import sha256_text

SYNTH_VARIABLES = {"instruction", "response", "topic", "n"}
JUDGE_VARIABLES = {"instruction", "reference", "candidate"}

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


def _default(name: str) -> str:
    return resources.files("llamaduo").joinpath("prompts", name).read_text(encoding="utf-8")


class PromptTemplate:
    def __init__(self, source: str, *, origin: str, allowed: set[str], required: list[set[str]] = ()):
        self.source, self.origin = source, origin
        try:
            self._template = _ENV.from_string(source)
            from jinja2 import meta

            used = meta.find_undeclared_variables(_ENV.parse(source))
        except jinja2.TemplateSyntaxError as exc:
            raise InputError(f"template syntax error: {exc.message}", file=origin, line=exc.lineno) from None
        unknown = used - allowed
        if unknown:
            raise InputError(f"unknown template variable(s) {sorted(unknown)}; allowed: {sorted(allowed)}",
                             file=origin)
        for group in required:
            if not used & group:
                raise InputError(f"the template never uses {' or '.join(sorted(group))}", file=origin)
        try:  # a trial render finds what only rendering can (attribute access on a string, filters)
            self._template.render(**{v: "sample" if v != "n" else 1 for v in allowed})
        except jinja2.TemplateError as exc:
            raise InputError(f"template cannot render: {exc}", file=origin) from None
        except Exception as exc:  # noqa: BLE001 - e.g. a filter that fails on text
            raise InputError(f"template cannot render: {type(exc).__name__}: {exc}", file=origin) from None
        self.sha256 = sha256_text(source)

    def render(self, **variables) -> str:
        return self._template.render(**variables)


def is_file_spec(spec: str) -> bool:
    """A template setting holds inline Jinja2 text or a file path: one line without `{{` is a path."""
    return "\n" not in spec and "{{" not in spec


def load_template(spec: str | None, *, default: str, allowed: set[str], field: str,
                  required: list[set[str]] = ()) -> PromptTemplate:
    if spec is None:
        return PromptTemplate(_default(default), origin=f"llamaduo/prompts/{default}", allowed=allowed)
    if is_file_spec(spec):
        path = Path(spec)
        if not path.is_file():
            raise InputError("template file not found", file=spec, field=field)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError("not UTF-8 text", file=spec, field=field) from None
        return PromptTemplate(text, origin=str(path), allowed=allowed, required=required)
    return PromptTemplate(spec, origin=field, allowed=allowed, required=required)


def synth_template(spec: str | None) -> PromptTemplate:
    return load_template(spec, default="synth.j2", allowed=SYNTH_VARIABLES, field="synth.prompt_template",
                         required=[{"instruction", "response"}])


def judge_template(spec: str | None) -> PromptTemplate:
    return load_template(spec, default="judge.j2", allowed=JUDGE_VARIABLES, field="judge.prompt_template",
                         required=[{"candidate"}, {"reference"}])
