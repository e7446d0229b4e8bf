"""Prompt templates: Jinja2, inline text or a file path; defaults are the paper's prompts.

Templates come from configs, and a deployment run may name one: they render in Jinja2's immutable
sandbox (plain Jinja2 runs Python: `{{ cycler.__init__.__globals__.os.getpid() }}`), and one that
reaches for a `_` attribute is refused when it is loaded, whichever branch it sits in.

The sandbox stops code, not work: `'x' * 1000000000` took 26 s and 3.8 GB, nested `range(100000)`
loops ran for minutes. So a render is bounded too (`BoundedSandbox`, `render_bounded`): one
operation may not build more than MAX_OUTPUT_CHARS (repetition, powers, padding widths, ranges of
MAX_RANGE), a render may not emit more than MAX_OUTPUT_CHARS, nor run longer than
RENDER_TIME_LIMIT_S (checked on every line the template's code runs). Beyond a bound the template is
an InputError naming its field (exit 2).
"""

from __future__ import annotations

import functools
import re
import sys
import time
from importlib import resources
from pathlib import Path

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import InputError
from .store import sha256_text

SYNTH_VARIABLES = {"instruction", "response", "topic", "n"}
JUDGE_VARIABLES = {"instruction", "reference", "candidate"}

MAX_OUTPUT_CHARS = 1_000_000  # a prompt is a few thousand tokens; this is ~50x a long-context prompt
MAX_RANGE = 10_000  # Jinja's own cap is 100,000: two nested loops of it never end
MAX_POWER_BITS = 4_096
RENDER_TIME_LIMIT_S = 2.0  # a prompt renders in milliseconds
# a width or precision of 1,000,000 or more in a %-format or a {}-format spec
_WIDTH = re.compile(r"%[-+ #0]*(?:\d*\.)?(\d{7,})|\{[^{}]*:[^{}]*?(\d{7,})")


class RenderBoundExceeded(Exception):
    """A render went beyond a bound (size, range, time); reported as the template's InputError."""


def _size(value) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


def _repeat(left, right):
    for seq, times in ((left, right), (right, left)):
        if _size(seq) is not None and isinstance(times, int) and _size(seq) * max(times, 0) > MAX_OUTPUT_CHARS:
            raise RenderBoundExceeded(f"a repetition would build {_size(seq) * times:,} items "
                                      f"(at most {MAX_OUTPUT_CHARS:,})")
    return left * right


def _power(left, right):
    if isinstance(left, int) and isinstance(right, int) and right > 0 and \
            abs(left).bit_length() * right > MAX_POWER_BITS:
        raise RenderBoundExceeded(f"{left} ** {right} is too large a number for a template")
    return left ** right


def _bounded_range(*args):
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise RenderBoundExceeded(f"range of {len(r):,} items (at most {MAX_RANGE:,})")
    return r


def _check_width(numbers=(), spec=None) -> None:
    """Padding and format widths: `center(10**9)`, `'%999999999s'|format(x)` allocate that much."""
    for n in numbers:
        if isinstance(n, int) and not isinstance(n, bool) and n > MAX_OUTPUT_CHARS:
            raise RenderBoundExceeded(f"a width of {n:,} (at most {MAX_OUTPUT_CHARS:,})")
    if isinstance(spec, str) and (m := _WIDTH.search(spec)):
        raise RenderBoundExceeded(f"a format width of {m.group(1) or m.group(2)} (at most {MAX_OUTPUT_CHARS:,})")


def _check_product(size: int, what: str) -> None:
    if size > MAX_OUTPUT_CHARS:
        raise RenderBoundExceeded(f"{what} would build {size:,} characters (at most {MAX_OUTPUT_CHARS:,})")


def _replaced_size(s, old, new, count=None) -> int:
    if not all(isinstance(x, str) for x in (s, old, new)):
        return 0
    hits = len(s) + 1 if old == "" else s.count(old)
    hits = min(hits, count) if isinstance(count, int) and count >= 0 else hits
    return len(s) + hits * max(len(new) - len(old), 0)


def _joined_size(sep, items) -> int:
    if not isinstance(sep, str):
        return 0
    between = len(sep) * max(len(items) - 1, 0)
    if between > MAX_OUTPUT_CHARS or isinstance(items, str):
        return between + len(items)
    return between + sum(len(str(i)) for i in items)


def _data_args(args) -> list:
    """A filter's arguments without the context Jinja passes first (pass_eval_context, pass_environment)."""
    return [a for a in args if not isinstance(a, (jinja2.nodes.EvalContext, jinja2.Environment))]


def _guard_filter(fn, name: str):
    """A filter that checks the size of what it is about to build first."""
    @functools.wraps(fn)  # keeps Jinja's pass_* marker
    def guarded(*args, **kwargs):
        value, *rest = _data_args(args)
        if name == "format":
            _check_width(spec=value)
        elif name == "replace":
            _check_product(_replaced_size(value, *rest, **kwargs), "a replacement")
        elif name == "indent":
            _check_width([*rest, *kwargs.values()])
            width = (rest or [kwargs.get("width", 4)])[0]
            _check_product(len(str(value)) * (1 + (width if isinstance(width, int) else len(str(width)))),
                           "an indent")
        else:
            _check_width([*rest, *kwargs.values()])
        return fn(*args, **kwargs)
    return guarded


def _guard_join(fn):
    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        head = [a for a in args if isinstance(a, jinja2.nodes.EvalContext)]
        value, *rest = _data_args(args)
        items = list(value) if not isinstance(value, str) else value
        sep = (rest or [kwargs.get("d", "")])[0]
        _check_product(_joined_size(sep, items), "a join")
        return fn(*head, items, *rest, **kwargs)
    return guarded


_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill", "expandtabs"}
_GUARDED_FILTERS = ("center", "indent", "format", "wordwrap", "truncate", "replace")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with bounded work per operation (see the module's note)."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.globals["range"] = _bounded_range
        self.binop_table = {**self.binop_table, "*": _repeat, "**": _power}
        for name in _GUARDED_FILTERS:
            self.filters[name] = _guard_filter(self.filters[name], name)
        self.filters["join"] = _guard_join(self.filters["join"])

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's signature
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        text, name = getattr(method, "__self__", None), getattr(method, "__name__", None)
        if isinstance(text, str):
            if name in _WIDTH_METHODS:
                _check_width([*args, *kwargs.values()])
            elif name in ("format", "format_map"):
                _check_width(spec=text)
            elif name == "replace":
                _check_product(_replaced_size(text, *args, **kwargs), "a replacement")
            elif name == "join" and args:
                items = args[0] if isinstance(args[0], str) else list(args[0])
                _check_product(_joined_size(text, items), "a join")
                args = (items, *args[1:])
        return super().call(__context, __obj, *args, **kwargs)


_ENV = BoundedSandbox(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


def render_bounded(template: jinja2.Template, variables: dict) -> str:
    """Render within MAX_OUTPUT_CHARS and RENDER_TIME_LIMIT_S. The output is streamed (generate) and
    counted; the clock is read on every line the template's own code runs (a trace on its frames
    only), so loops that print nothing are stopped too."""
    deadline = time.monotonic() + RENDER_TIME_LIMIT_S

    def on_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise RenderBoundExceeded(f"rendering took more than {RENDER_TIME_LIMIT_S:g} s")
        return on_line

    def on_call(frame, event, arg):
        return on_line if frame.f_code.co_filename == _TEMPLATE_FILE else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        parts, size = [], 0
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise RenderBoundExceeded(f"the rendered prompt exceeds {MAX_OUTPUT_CHARS:,} characters")
            parts.append(chunk)
        return "".join(parts)
    finally:
        sys.settrace(previous)


_TEMPLATE_FILE = "<template>"  # the code file name Jinja gives templates made from strings


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
        self.field = field
        try:  # a trial render finds what only rendering can (attribute access on a string, filters, the sandbox)
            self.render(**{v: "sample" if v != "n" else 1 for v in allowed})
        except InputError:
            raise
        except jinja2.TemplateError as exc:
            raise InputError(f"template cannot render: {exc}", file=origin, field=field) from None
        except Exception as exc:  # noqa: BLE001 - e.g. a filter that fails on text
            raise InputError(f"template cannot render: {type(exc).__name__}: {exc}", file=origin,
                             field=field) from None
        self.sha256 = sha256_text(source)

    def render(self, **variables) -> str:
        try:
            return render_bounded(self._template, variables)
        except RenderBoundExceeded as exc:
            raise InputError(f"template goes beyond the rendering bounds: {exc}", file=self.origin,
                             field=self.field) from None


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
