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
