"""Prompt templates: Jinja2, inline text or a file path; defaults are the paper's prompts.

Templates come from configs, and a deployment run may name one: they render in Jinja2's immutable
sandbox (plain Jinja2 runs Python: `{{ cycler.__init__.__globals__.os.getpid() }}`), and one that
reaches for a `_` attribute is refused when it is loaded, whichever branch it sits in.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import InputError
from .store import sha256_text

SYNTH_VARIABLES = {"instruction", "response", "topic", "n"}
JUDGE_VARIABLES = {"instruction", "reference", "candidate"}

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                     autoescape=False)


def _unsafe_attributes(tree: nodes.Template) -> list[str]:
    """`_`-prefixed attributes the template reaches for (`x.__class__`, `x['__init__']`): the way out
    of the sandbox, refused up front even in a branch the trial render does not take."""
    found = [n.attr for n in tree.find_all(nodes.Getattr) if n.attr.startswith("_")]
    found += [n.arg.value for n in tree.find_all(nodes.Getitem)
              if isinstance(n.arg, nodes.Const) and isinstance(n.arg.value, str) and n.arg.value.startswith("_")]
    return found


def _default(name: str) -> str:
    return resources.files("llamaduo").joinpath("prompts", name).read_text(encoding="utf-8")


class PromptTemplate:
    def __init__(self, source: str, *, origin: str, allowed: set[str], required: list[set[str]] = (),
                 field: str | None = None):
        self.source, self.origin = source, origin
        try:
            self._template = _ENV.from_string(source)
            tree = _ENV.parse(source)
            used = meta.find_undeclared_variables(tree)
        except jinja2.TemplateSyntaxError as exc:
            raise InputError(f"template syntax error: {exc.message}", file=origin, line=exc.lineno,
                             field=field) from None
        if unsafe := _unsafe_attributes(tree):
            raise InputError(f"the template reaches for {sorted(set(unsafe))}: attributes starting with _ are "
                             "not allowed in templates (they can run code)", file=origin, field=field)
        unknown = used - allowed
        if unknown:
            raise InputError(f"unknown template variable(s) {sorted(unknown)}; allowed: {sorted(allowed)}",
                             file=origin, field=field)
        for group in required:
            if not used & group:
                raise InputError(f"the template never uses {' or '.join(sorted(group))}", file=origin, field=field)
        try:  # a trial render finds what only rendering can (attribute access on a string, filters, the sandbox)
            self._template.render(**{v: "sample" if v != "n" else 1 for v in allowed})
        except jinja2.TemplateError as exc:
            raise InputError(f"template cannot render: {exc}", file=origin, field=field) from None
        except Exception as exc:  # noqa: BLE001 - e.g. a filter that fails on text
            raise InputError(f"template cannot render: {type(exc).__name__}: {exc}", file=origin,
                             field=field) from None
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
        return PromptTemplate(text, origin=str(path), allowed=allowed, required=required, field=field)
    return PromptTemplate(spec, origin=field, allowed=allowed, required=required, field=field)


def synth_template(spec: str | None) -> PromptTemplate:
    return load_template(spec, default="synth.j2", allowed=SYNTH_VARIABLES, field="synth.prompt_template",
                         required=[{"instruction", "response"}])


def judge_template(spec: str | None) -> PromptTemplate:
    return load_template(spec, default="judge.j2", allowed=JUDGE_VARIABLES, field="judge.prompt_template",
                         required=[{"candidate"}, {"reference"}])
