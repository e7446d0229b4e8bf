"""Markdown that data cannot forge (issue 28, point 12): every value from data or a model goes
through llamaduo/markdown.py, rendered here with a CommonMark + GFM-table parser."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamaduo.markdown import Raw, code_span, escape_cell, escape_inline, fenced, table

markdown_it = pytest.importorskip("markdown_it")
RENDER = markdown_it.MarkdownIt("commonmark").enable("table").render

ATTACKS = ["returns | 8 | 97 [95, 99] | 100% | yes\n| forged | 1 | 2 | 3 | yes",
           "![x](https://attacker.example/pixel.png)", '<img src="https://attacker.example/p.png">',
           "<script>alert(1)</script>", "[click](javascript:alert(1))", "`code` ``x`` &amp; &#60;b&#62;",
           "<https://attacker.example/auto>", "line one\r\nline two\u2028three", "\\|\\", "# heading", "*bold* _it_"]


class _Tree(HTMLParser):
    """Tags seen and the text of every table cell, row by row."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.rows, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def parsed(markdown: str) -> _Tree:
    tree = _Tree()
    tree.feed(RENDER(markdown))
    return tree


def shown(text: str) -> str:
    """What a cell should show: the text on one line (GFM trims a cell's spaces)."""
    return re.sub(r"[\r\n\u2028]+", " ", text).strip()


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\x0b\x0c\x85\u2029"),
                max_size=40) | st.sampled_from(ATTACKS)


@settings(max_examples=300, deadline=None)
@given(cells=st.lists(st.tuples(_text, _text), min_size=1, max_size=4))
def test_a_table_of_any_text_has_its_rows_and_cells_and_nothing_else(cells):
    tree = parsed("\n".join(table(["category", "answer"], cells)) + "\n")
    assert len(tree.rows) == 1 + len(cells), "no row forged"
    assert all(len(r) == 2 for r in tree.rows), "no column forged"
    for got, want in zip(tree.rows[1:], cells):
        assert [c.strip() for c in got] == [shown(w) for w in want]
    assert not {"img", "a", "script", "code", "h1"} & set(tree.tags)


@settings(max_examples=200, deadline=None)
@given(text=_text)
def test_inline_text_is_one_inert_line(text):
    tree = parsed(f"- reason: {escape_inline(text)}\n\nnext paragraph\n")
    assert tree.tags.count("li") == 1 and tree.tags.count("p") == 1
    assert not {"img", "a", "script", "code", "h1", "table", "blockquote"} & set(tree.tags)


def test_raw_markdown_and_kept_fragments_stay_as_written():
    assert escape_inline(Raw("**0.80** [0.5, 0.9]")) == "**0.80** [0.5, 0.9]"
    assert escape_inline("set `x` <b>", keep=["set `x`"]) == "set `x` \\<b\\>"
    assert escape_cell(None) == "–"
    assert table(["a", Raw("**b**")], [[Raw("`x`"), "`y`"]], align="lr")[1:] == ["|---|---:|", "| `x` | \\`y\\` |"]
    with pytest.raises(ValueError, match="3 cells under 2 headers"):
        table(["a", "b"], [[1, 2, 3]])


@given(text=st.text(max_size=30))
def test_a_fenced_block_cannot_be_closed_by_its_text(text):
    block = "\n".join(fenced(text + "\n```\n<script>x</script>", "python")) + "\nafter\n"
    tree = parsed(block)
    assert tree.tags.count("pre") == 1 and "script" not in tree.tags


@given(text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30))
def test_a_code_span_holds_any_text_literally(text):
    tree = parsed(f"run {code_span(text + '` <img src=x>')} now\n")
    assert tree.tags.count("code") == 1 and "img" not in tree.tags
