"""The run's chat format carried into the exported files, so a runtime given them answers as evaluated.

- `with_default_system`: the tokenizer's Jinja chat template with the run's system prompt as the
  default system message (used when a request brings none), for engines that read
  `tokenizer_config.json` / `chat_template.jinja` (vLLM, `transformers serve`, llama.cpp from GGUF).
- `role_wrappers` + `ollama_template`: the same format as an Ollama (Go) TEMPLATE, found by rendering
  the chat template around sentinel contents, never by guessing the model family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import InputError

# Prepended to the template: Jinja's `if` does not open a scope, so the rebinding reaches the rest.
_DEFAULT_SYSTEM = ("{%- if not messages or messages[0]['role'] != 'system' -%}"
                   "{%- set messages = [{'role': 'system', 'content': SYSTEM_PROMPT}] + messages -%}"
                   "{%- endif -%}")


def jinja_string(text: str) -> str:
    """`text` as a Jinja string literal: JSON's escapes are ones Jinja's lexer reads back
    (it decodes a literal with Python's unicode-escape after escaping non-ASCII)."""
    return json.dumps(text, ensure_ascii=False)


def with_default_system(template: str, system_prompt: str | None) -> str:
    """`template` that inserts `system_prompt` as the first message unless the conversation starts
    with a system message of its own (as `llamaduo.infer` builds evaluation prompts)."""
    if not system_prompt:
        return template
    return _DEFAULT_SYSTEM.replace("SYSTEM_PROMPT", jinja_string(system_prompt)) + template


@dataclass(frozen=True)
class RoleWrappers:
    """What the chat template writes around each message's content, and to open the answer."""
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str
    head: str = ""  # before the first message (a BOS token, say)

    def render(self, messages: list[dict]) -> str:
        out = [self.head]
        for m in messages:
            pre, post = getattr(self, m["role"])
            out += [pre, m["content"], post]
        return "".join(out + [self.generation])


_S, _U, _A = "\x01system-sentinel\x01", "\x01user-sentinel\x01", "\x01assistant-sentinel\x01"


def role_wrappers(tok) -> RoleWrappers:
    """Split the tokenizer's chat template into per-role wrappers; InputError when the template is not
    a concatenation of per-message pieces (then no Ollama TEMPLATE can say the same)."""
    def render(messages, gen=False) -> str:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

    sys_only = render([{"role": "system", "content": _S}])
    conv = [{"role": "system", "content": _S}, {"role": "user", "content": _U}]
    with_user = render(conv)
    with_answer = render(conv + [{"role": "assistant", "content": _A}])
    with_gen = render(conv, gen=True)
    try:
        head_s, post_s = sys_only.split(_S)
        if not (with_user.startswith(sys_only) and with_answer.startswith(with_user)
                and with_gen.startswith(with_user)):
            raise ValueError("not a concatenation")
        pre_u, post_u = with_user[len(sys_only):].split(_U)
        pre_a, post_a = with_answer[len(with_user):].split(_A)
    except ValueError:
        raise InputError("the chat template does not write each message on its own (it cannot be expressed as "
                         "an Ollama TEMPLATE)", field="student.model") from None
    # What precedes every conversation (a BOS token), unless each message opens with that token too
    # (ChatML's BOS is <|im_start|>).
    bos = getattr(tok, "bos_token", None) or ""
    head = bos if bos and head_s.startswith(bos) and not pre_u.startswith(bos) else ""
    wrappers = RoleWrappers(system=(head_s[len(head):], post_s), user=(pre_u, post_u), assistant=(pre_a, post_a),
                            generation=with_gen[len(with_user):], head=head)
    check = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
             {"role": "assistant", "content": "a"}, {"role": "user", "content": "v"}]
    if wrappers.render(check) != render(check, gen=True):
        raise InputError("the chat template writes messages differently by position (it cannot be expressed as "
                         "an Ollama TEMPLATE)", field="student.model")
    return wrappers


def _go_literal(text: str) -> str:
    if "{{" in text or "}}" in text:
        raise InputError("the chat template's markup contains '{{' (not expressible as an Ollama TEMPLATE)",
                         field="student.model")
    return text


def ollama_template(w: RoleWrappers) -> str:
    """An Ollama TEMPLATE (Go template over `.Messages`) writing what `w` writes; no whitespace trimming,
    so every newline of the chat format is kept."""
    parts = [_go_literal(w.head), "{{ range .Messages }}"]
    for i, role in enumerate(("system", "user", "assistant")):
        pre, post = getattr(w, role)
        parts.append(("{{ if" if i == 0 else "{{ else if") + f' eq .Role "{role}" }}}}'
                     + _go_literal(pre) + "{{ .Content }}" + _go_literal(post))
    parts.append("{{ end }}{{ end }}" + _go_literal(w.generation))
    return "".join(parts)


def stop_strings(w: RoleWrappers, eos_token: str | None) -> list[str]:
    """Where an answer ends: the assistant wrapper's closing marker, and the end-of-sequence token."""
    out = []
    for s in (w.assistant[1].strip(), eos_token or ""):
        if s and s not in out:
            out.append(s)
    return out


def modelfile(gguf_rel: str, w: RoleWrappers, *, system_prompt: str | None, stop: list[str],
              max_new_tokens: int) -> str:
    """An Ollama Modelfile for `gguf_rel` (relative to the Modelfile): the chat format, the run's system
    prompt, greedy decoding and the evaluated answer length."""
    def quoted(text: str) -> str:
        if '"""' in text:
            raise InputError('contains """ (cannot be written into an Ollama Modelfile)', field="student.system_prompt")
        return f'"""{text}"""'

    lines = [f"FROM ./{gguf_rel}", f"TEMPLATE {quoted(ollama_template(w))}"]
    if system_prompt:
        lines.append(f"SYSTEM {quoted(system_prompt)}")
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stop]
    lines += ["PARAMETER temperature 0", f"PARAMETER num_predict {max_new_tokens}"]
    return "\n".join(lines) + "\n"
