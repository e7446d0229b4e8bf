"""Markdown that data cannot forge: every value from data or a model is escaped before it enters a
page (decision.md, round reports, the Prefect artifacts that show them).

A category holding `|` and a newline forged a table row; an instruction with
`![x](https://attacker.example/pixel.png)` or `<img>` loaded an image in the reviewer's browser; an
answer `<script>…</script>` went into the page as HTML. Escaped text renders as the characters it
holds: line breaks become spaces (a value is one line of a paragraph or one table cell), and
markdown's active punctuation is backslash-escaped (CommonMark: any escaped ASCII punctuation is literal),
so no table cell, link, image, HTML tag, entity or code span can start inside a value.

`Raw` marks markdown this code wrote (bold numbers, `code` hints): `table` and `escape_inline`
pass it as written. Anything else is data.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

_LINE_BREAKS = re.compile(r"[\r\n\v\f\x85\u2028\u2029]+")
# `\` itself; `|` cells, `[ ]` links (a `(` after text is just text), `!` images, `< >` HTML and
# autolinks, `&` entities, backticks code spans, `* ~` emphasis and strike-through (a value shows as
# the characters it holds, never as a forged **verdict**), `#` headings. `( ) . -` stay as they are.
_PUNCTUATION = re.compile(r"([\\`*~\[\]!|<>&#])")
# `_` only emphasises at a word's edge: judge_score stays readable, _x_ is escaped.
_EDGE_UNDERSCORES = re.compile(r"(?<![^\W_])_+|_+(?![^\W_])")


class Raw(str):
    """Markdown written by this code, not data: passed through unescaped."""


def escape_inline(value: object, *, keep: Iterable[str] = ()) -> str:
    """`value` as inert inline markdown (one line). `keep`: fragments this code wrote (a hint
    with `code` in it) that stay as written wherever they occur in `value`."""
    if isinstance(value, Raw):
        return str(value)
    text = "" if value is None else str(value)
    for fragment in keep:
        if fragment and fragment in text:
            return fragment.join(escape_inline(part, keep=[k for k in keep if k != fragment])
                                 for part in text.split(fragment))
    text = _PUNCTUATION.sub(r"\\\1", _LINE_BREAKS.sub(" ", text))
    return _EDGE_UNDERSCORES.sub(lambda m: "\\_" * len(m.group()), text)


def escape_cell(value: object) -> str:
    """A table cell: inert inline markdown (pipes escaped, no line breaks); None is an en dash."""
    return "–" if value is None else escape_inline(value)


def table(headers: Sequence[object], rows: Iterable[Sequence[object]], *, align: str = "") -> list[str]:
    """A GFM table as lines, every header and cell escaped unless `Raw`. `align`: one character
    per column, `l` or `r` (default left); a row shorter than the headers is padded with empty
    cells, a longer one is an error (a forged column is what this prevents)."""
    width = len(headers)
    marks = {"l": "---", "r": "---:"}
    lines = ["| " + " | ".join(escape_cell(h) for h in headers) + " |",
             "|" + "|".join(marks[(align[i] if i < len(align) else "l")] for i in range(width)) + "|"]
    for row in rows:
        row = list(row)
        if len(row) > width:
            raise ValueError(f"a row of {len(row)} cells under {width} headers")
        lines.append("| " + " | ".join(escape_cell(c) for c in row + [""] * (width - len(row))) + " |")
    return lines


def code_span(text: str) -> str:
    """`text` as inline code, literal (outside a table: a pipe in a code span still splits a cell):
    delimited by more backticks than any run in it, on one line."""
    text = _LINE_BREAKS.sub(" ", text)
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def fenced(text: str, info: str = "") -> list[str]:
    """A fenced code block holding `text` literally: the fence is longer than any run of backticks
    in it, so the text cannot close it (CommonMark)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + info] + text.splitlines() + [fence]
