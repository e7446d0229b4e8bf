"""Templates cannot run code: a prompt template from a config (or named by a deployment run) renders
in Jinja2's immutable sandbox, and one that reaches for unsafe attributes is an input error naming
the template file and field, through the real CLI (`llamaduo validate`)."""

from __future__ import annotations

import os

import pytest
import yaml

from flows.cli import main
from llamaduo.errors import InputError
from llamaduo.templates import JUDGE_VARIABLES, SYNTH_VARIABLES, PromptTemplate
from tests.test_bad_inputs import _base, _check, _listing, _student, write

PID_PROBE = "{{ cycler.__init__.__globals__.os.getpid() }}"


@pytest.mark.parametrize("key,text", [
    ("synth.prompt_template", PID_PROBE + " {{ instruction }} {{ response }}"),
    ("judge.prompt_template", PID_PROBE + " {{ candidate }} {{ reference }}"),
    # in a branch the trial render never takes: refused all the same
    ("synth.prompt_template", "{% if n == 12345 %}{{ instruction.__class__.__mro__ }}{% endif %}"
                              "{{ instruction }} {{ response }}"),
    ("judge.prompt_template", "{{ candidate }} {{ reference['__class__'] }}"),
])
def test_template_reaching_for_unsafe_attributes_exits_2(key, text, tmp_path, capsys):
    _student(tmp_path)
    cfg = _base(tmp_path)
    cfg.setdefault(key.split(".")[0], {})[key.split(".")[1]] = write(tmp_path, "evil.j2", text)
    path = write(tmp_path, "cfg.yaml", yaml.safe_dump(cfg))
    before = _listing(tmp_path)
    err = _check(capsys, main(["validate", path]), ["evil.j2", key, "attributes starting with _"], tmp_path, before)
    assert str(os.getpid()) not in err
    assert str(os.getpid()) not in capsys.readouterr().out


def test_inline_template_is_sandboxed_too(tmp_path, capsys):
    _student(tmp_path)
    cfg = _base(tmp_path)
    cfg["synth"] = {"prompt_template": PID_PROBE + "{{ instruction }} {{ response }}"}
    path = write(tmp_path, "cfg.yaml", yaml.safe_dump(cfg))
    before = _listing(tmp_path)
    err = _check(capsys, main(["validate", path]), ["synth.prompt_template"], tmp_path, before)
    assert str(os.getpid()) not in err


@pytest.mark.parametrize("text", [
    "{% set d = {} %}{{ d.update(a=1) }}{{ candidate }} {{ reference }}",  # mutating: the immutable sandbox
    "{% set l = [] %}{{ l.append(candidate) }}{{ candidate }} {{ reference }}",
])
def test_sandbox_refuses_what_the_static_check_does_not_see(text):
    with pytest.raises(InputError, match="template cannot render.*unsafe") as e:
        PromptTemplate(text, origin="t.j2", allowed=JUDGE_VARIABLES, field="judge.prompt_template")
    assert e.value.field == "judge.prompt_template" and e.value.file == "t.j2"


def test_ordinary_templates_render_as_before():
    t = PromptTemplate("{{ instruction|upper }} / {{ response.strip() }} / {{ n }} {{ topic or 'any' }}\n",
                       origin="t.j2", allowed=SYNTH_VARIABLES)
    assert t.render(instruction="a", response=" b ", n=3, topic="") == "A / b / 3 any\n"


# -- issue 28, point 7: rendering bounded in time and output size -------------------------------------------
BOMBS = [
    # a huge repetition, built in one operation (26 s and 3.8 GB inside preflight before)
    ("repeat", "{{ 'x' * 50000000 }}{{ candidate }} {{ reference }}"),
    ("repeat_list", "{{ ([1] * 50000000)|length }}{{ candidate }} {{ reference }}"),
    ("power", "{{ (7 ** 3000000) % 10 }}{{ candidate }} {{ reference }}"),
    ("filter_width", "{{ candidate|center(50000000) }}{{ reference }}"),
    ("format_width", "{{ '%50000000s'|format(candidate) }}{{ reference }}"),
    ("method_width", "{{ candidate.ljust(50000000) }}{{ reference }}"),
    # output that grows in a loop: cut by the size limit
    ("output", "{% for i in range(5000) %}{{ reference * 1000 }}{% endfor %}{{ candidate }}"),
    # nested loops that print nothing: cut by the time limit (> 20 s before with range(100000))
    ("nested_range", "{% for a in range(3000) %}{% for b in range(3000) %}{% endfor %}{% endfor %}"
                     "{{ candidate }} {{ reference }}"),
    ("nested_text", "{% set s = reference * 500 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"
                    "{{ candidate }}"),
]


@pytest.mark.parametrize("name,text", BOMBS, ids=[b[0] for b in BOMBS])
def test_a_template_beyond_the_rendering_bounds_is_an_input_error_naming_the_field(name, text, monkeypatch):
    import time

    import llamaduo.templates as templates

    monkeypatch.setattr(templates, "RENDER_TIME_LIMIT_S", 0.3, raising=False)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="template") as e:
        PromptTemplate(text, origin="t.j2", allowed=JUDGE_VARIABLES, field="judge.prompt_template")
    assert e.value.field == "judge.prompt_template" and e.value.file == "t.j2"
    assert time.perf_counter() - t0 < 2.0


def test_rendering_real_inputs_is_bounded_too(monkeypatch):
    """The trial render uses short samples; a template that only explodes on a long input is cut
    when it renders that input (a stage's InputError, exit 2), not left to run."""
    import time

    import llamaduo.templates as templates

    monkeypatch.setattr(templates, "RENDER_TIME_LIMIT_S", 0.3, raising=False)
    t = PromptTemplate("{% for a in candidate %}{% for b in candidate %}{% endfor %}{% endfor %}{{ reference }}",
                       origin="t.j2", allowed=JUDGE_VARIABLES, field="judge.prompt_template")
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="judge.prompt_template|time"):
        t.render(instruction="i", reference="r", candidate="c" * 20000)
    assert time.perf_counter() - t0 < 2.0


def test_validate_refuses_a_repetition_bomb_quickly(tmp_path, capsys):
    """Through the real CLI: `'x' * 1000000000` is refused at once, naming the template's field."""
    import time

    _student(tmp_path)
    cfg = _base(tmp_path)
    cfg["synth"] = {"prompt_template": "{{ 'x' * 1000000000 }}{{ instruction }} {{ response }}"}
    path = write(tmp_path, "cfg.yaml", yaml.safe_dump(cfg))
    before = _listing(tmp_path)
    t0 = time.perf_counter()
    _check(capsys, main(["validate", path]), ["synth.prompt_template"], tmp_path, before)
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("text", [
    "{{ ('x' * 900000)|replace('x', 'y' * 900000) }}{{ candidate }}{{ reference }}",
    "{{ ('x' * 900000).replace('x', 'yy') }}{{ candidate }}{{ reference }}",
    "{{ ('x' * 900000)|join('y' * 900000) }}{{ candidate }}{{ reference }}",
    "{{ ('y' * 900000).join('x' * 900000) }}{{ candidate }}{{ reference }}",
    "{{ ('\\n' * 900000)|indent(900000) }}{{ candidate }}{{ reference }}",
])
def test_one_operation_that_multiplies_two_bounded_sizes_is_refused(text):
    with pytest.raises(InputError, match="rendering bounds"):
        PromptTemplate(text, origin="t.j2", allowed=JUDGE_VARIABLES, field="judge.prompt_template")


def test_bounded_filters_and_methods_still_work():
    t = PromptTemplate("{{ candidate|replace('a', 'b') }}|{{ ['x', reference]|join(', ') }}|{{ '-'.join(['p', 'q']) }}|"
                       "{{ candidate|center(7) }}|{{ reference|indent(2, first=True) }}|{{ '%5s'|format(candidate) }}|"
                       "{{ candidate|truncate(9, True, '') }}|{{ '{:>4}'.format(1) }}|{{ 12345678 }}",
                       origin="t.j2", allowed=JUDGE_VARIABLES)
    out = t.render(instruction="", reference="r\ns", candidate="aa")
    assert out == "bb|x, r\ns|p-q|   aa  |  r\n  s|   aa|aa|   1|12345678"
