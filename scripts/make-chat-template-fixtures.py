#!/usr/bin/env python3
"""Regenerate tests/fixtures/chat_templates/*.json with HF transformers.

Each fixture records, for one chat template, the keyword arguments
transformers' apply_chat_template hands to the compiled Jinja template
(messages, tools, documents, add_generation_prompt, bos_token, eos_token and
any extra ones) and what the template rendered, or the substring of the
error it raised. The messages are stored as a client sends them (null
values, reasoning under any of its names): the test passes them through
duet_chat_template_normalize_messages() first, as transformers normalizes
them. tests/runtime/test_chat_template.c renders the same contexts with
duet's interpreter and compares byte for byte.

Run in the reference venv (scripts/setup-reference-venv.sh):
    python scripts/make-chat-template-fixtures.py [--llama-templates DIR] [--model GGUF]
"""
import argparse
import json
import os
import sys

import jinja2
from transformers.utils import chat_template_utils as ctu

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "chat_templates")
DEFAULT_TEMPLATES = os.path.expanduser(
    "~/.cache/duet/src/llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates")
DEFAULT_MODEL = os.path.expanduser("~/.cache/duet/models/SmolLM2-135M-Instruct.Q4_1.gguf")

# Text that exercises escaping, trimming and code-point handling.
TRICKY = ("  H\u00e9llo \u00abmonde\u00bb \u2014 \u4f60\u597d \U0001F600\n"
          "\"double\" and 'single' quotes, a \\ backslash, {{ braces }} and {% tags %}\n"
          "\ttabbed line\u3000\u00a0 \n")

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city (\u00b0C)",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Paris\""},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "ratio": {"type": "number", "default": 0.5},
            },
            "required": ["city"],
        },
    },
}]


def sys_user():
    return [{"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What is 2+2?"}]


def multi_turn():
    return [{"role": "system", "content": "  Be helpful.  \n"},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me a joke."}]


def ends_assistant():
    return [{"role": "user", "content": "Say hi"},
            {"role": "assistant", "content": "\nhi"}]


def tricky():
    return [{"role": "system", "content": TRICKY},
            {"role": "user", "content": TRICKY},
            {"role": "assistant", "content": "Un caf\u00e9 \u2615? \"Oui\".\n"},
            {"role": "user", "content": "\u00c7a va\r\n?"}]


def not_alternating():
    return [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]


def tool_call_msgs(call_id="call12345"):
    return [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"id": call_id, "type": "function",
                             "function": {"name": "get_weather",
                                          "arguments": {"city": "Paris", "days": 2}}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "{\"temp\": 21.5}"},
            {"role": "tool", "tool_call_id": call_id, "content": "second"},
            {"role": "assistant", "content": "It is 21.5 \u00b0C."},
            {"role": "user", "content": "Thanks"}]


# template file -> (fixture name, bos, eos, cases). A case: (name, messages,
# add_generation_prompt, extra kwargs incl. tools).
def common_cases():
    return [
        ("system_user_gen", sys_user(), True, {}),
        ("user_only_gen", [{"role": "user", "content": "Hello"}], True, {}),
        ("multi_turn_gen", multi_turn(), True, {}),
        ("multi_turn_nogen", multi_turn(), False, {}),
        ("ends_assistant", ends_assistant(), False, {}),
        ("tricky_text", tricky(), True, {}),
    ]


TEMPLATES = [
    ("smollm2-135m-instruct", None, "<|im_start|>", "<|im_end|>", common_cases()),
    ("llama-3.1-8b-instruct", "meta-llama-Llama-3.1-8B-Instruct.jinja",
     "<|begin_of_text|>", "<|eot_id|>", common_cases() + [
         ("fixed_date", sys_user(), True, {"date_string": "28 Nov 2026"}),
         ("tools_in_user", tool_call_msgs(), True, {"tools": TOOLS, "date_string": "28 Nov 2026"}),
         ("tools_in_system", tool_call_msgs(), False,
          {"tools": TOOLS, "tools_in_user_message": False}),
         ("builtin_tools", [{"role": "user", "content": "search"},
                            {"role": "assistant", "tool_calls": [
                                {"type": "function", "function": {
                                    "name": "brave_search",
                                    "arguments": {"query": "duet", "count": "3"}}}]}],
          True, {"builtin_tools": ["brave_search", "code_interpreter", "wolfram_alpha"]}),
         ("tools_no_user", [], True, {"tools": TOOLS}),
         ("null_content", [{"role": "user", "content": None},
                           {"role": "assistant", "content": " ok ", "name": None}], True, {}),
         ("two_tool_calls", [{"role": "user", "content": "x"},
                             {"role": "assistant", "tool_calls": [
                                 {"function": {"name": "a", "arguments": {}}},
                                 {"function": {"name": "b", "arguments": {}}}]}], True, {}),
     ]),
    ("qwen2.5-7b-instruct", "Qwen-Qwen2.5-7B-Instruct.jinja", None, "<|im_end|>",
     common_cases() + [
         ("tools", tool_call_msgs(), True, {"tools": TOOLS}),
         ("tools_with_system", [{"role": "system", "content": "Sys"}] + tool_call_msgs(), False,
          {"tools": TOOLS}),
         ("tool_first", [{"role": "tool", "content": "orphan"}], True, {}),
     ]),
    ("mistral-nemo-instruct-2407", "mistralai-Mistral-Nemo-Instruct-2407.jinja", "<s>", "</s>",
     common_cases() + [
         ("not_alternating", not_alternating(), True, {}),
         ("tools", tool_call_msgs(), True, {"tools": TOOLS}),
         ("bad_tool_call_id", tool_call_msgs("short"), True, {"tools": TOOLS}),
         ("bad_role", [{"role": "narrator", "content": "x"}], True, {}),
     ]),
    ("qwen3-0.6b", "Qwen-Qwen3-0.6B.jinja", None, "<|im_end|>", common_cases() + [
        ("no_thinking", sys_user(), True, {"enable_thinking": False}),
        ("tools", tool_call_msgs(), True, {"tools": TOOLS}),
        ("tool_call_null_content", [{"role": "user", "content": "x"},
                                    {"role": "assistant", "content": None, "tool_calls": [
                                        {"type": "function", "function": {
                                            "name": "f", "arguments": "{\"a\": 1}"}}]},
                                    {"role": "tool", "content": "<r>"}], True, {"tools": TOOLS}),
        ("reasoning_fields", [{"role": "user", "content": "q1"},
                              {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
                              {"role": "user", "content": "q2"},
                              {"role": "assistant", "content": "a2", "reasoning": "r2"},
                              {"role": "assistant", "content": "a3", "thinking": "r3",
                               "reasoning_content": None}], False, {}),
        ("think_in_content", [{"role": "user", "content": "q"},
                              {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nanswer"}],
         False, {}),
    ]),
    ("smollm3-3b", "HuggingFaceTB-SmolLM3-3B.jinja", None, "<|im_end|>", common_cases() + [
        ("no_think_flag", multi_turn(), True, {"enable_thinking": False}),
        ("no_think_system", [{"role": "system", "content": "Be brief /no_think  "},
                             {"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "\n\nhello"}], True, {}),
        ("think_system", [{"role": "system", "content": "/think"},
                          {"role": "user", "content": "hi"},
                          {"role": "tool", "content": ["not", "a", "string"]}], True, {}),
    ]),
]

# Small templates that exercise one construct each, rendered with the same
# environment. Each: (name, template, context).
CONSTRUCTS = [
    ("loop_vars", "{% for x in xs %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/"
     "{{ loop.revindex0 }}/{{ loop.length }}/{{ loop.first }}/{{ loop.last }}"
     "{{ '|' if not loop.last }}{% endfor %}", {"xs": ["a", "b", "c"]}),
    ("loop_prev_next", "{% for x in xs %}[{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }}]"
     "{% endfor %}", {"xs": [1, 2, 3]}),
    ("loop_else", "{% for x in xs %}{{ x }}{% else %}empty{% endfor %}", {"xs": []}),
    ("loop_filter", "{% for x in xs if x % 2 == 0 %}{{ x }}:{{ loop.length }} {% endfor %}",
     {"xs": [1, 2, 3, 4, 5, 6]}),
    ("loop_items", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}"
     "{% for k, v in d | items %}{{ k }}{% endfor %}{% for k in d %}{{ k }}{% endfor %}",
     {"d": {"b": 1, "a": [1, "x"], "c": None}}),
    ("loop_break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}"
     "{% if x > 5 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("loop_nested_scope", "{% set x = 'outer' %}{% for i in [1, 2] %}{% set x = i %}{{ x }}"
     "{% for j in 'ab' %}{{ loop.index }}{{ j }}{% endfor %}{% endfor %}{{ x }}", {}),
    ("namespace", "{% set ns = namespace(a=1, s='') %}{% for i in range(4) %}"
     "{% set ns.a = ns.a * 2 %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.a }} {{ ns.s }}", {}),
    ("set_block", "{% set body %}  Hi {{ name }}!  {% endset %}[{{ body | trim }}]{{ body|length }}",
     {"name": "Bob"}),
    ("macro", "{% macro tag(name, value='none', sep=': ') %}<{{ name }}{{ sep }}{{ value }}>"
     "{% endmacro %}{{ tag('a') }}{{ tag('b', 2) }}{{ tag('c', sep='=', value=[1]) }}", {}),
    ("raw", "{% raw %}{{ not parsed }} {% if %}{% endraw %}!", {}),
    ("comments_ws", "a  {# c #}  b\n  {%- if true -%}\n  c  \n{%- endif %}\n  d {{- ' e ' -}} f\n"
     "    {% if true %}\n  g\n    {% endif %}\n{{ 'h' }}\n", {}),
    ("lstrip_trim", "<ul>\n  {% for i in [1, 2] %}\n    <li>{{ i }}</li>\n  {% endfor %}\n</ul>\n"
     "  {#- x #}\n  {%+ if true %}k{% endif %}\n", {}),
    ("literals", "{{ 'a\\tb\\n\\u00e9\\x41\\\\' }}|{{ \"q'\" }}|{{ 1 }}|{{ 1.5 }}|{{ 1e3 }}|"
     "{{ 0.1 + 0.2 }}|{{ true }}|{{ False }}|{{ none }}|{{ [1, 'a', none, true, 2.0] }}|"
     "{{ {'k': 'v', 'n': [1]} }}|{{ 'ab' 'cd' }}|{{ (1, 2) }}|{{ 1_000 }}", {}),
    ("arith", "{{ 7 + 3 }} {{ 7 - 10 }} {{ 7 * 3 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} "
     "{{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1.5 * 2 }} {{ 'ab' * 3 }} {{ [1] + [2] }} "
     "{{ 'x' ~ 1 ~ none }} {{ -(3) }} {{ 10 / 4 }} {{ 1e20 * 10 }} {{ 1 / 3 }} {{ 2.5 // 1 }}", {}),
    ("compare", "{{ 1 < 2 }} {{ 2 <= 1 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ 'a' != 'a' }} "
     "{{ 'b' in 'abc' }} {{ 3 not in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 1 < 2 < 3 }} "
     "{{ [1, 2] == [1, 2] }} {{ none == none }} {{ true == 1 }}", {}),
    ("logic", "{{ 0 or 'x' }} {{ 1 and 'y' }} {{ not '' }} {{ none or [] }} {{ 'a' if x else 'b' }} "
     "{{ 'c' if y }}|{{ (x and y) is none }} {{ not x is defined }}", {"x": 0, "y": None}),
    ("subscript_slice", "{{ s[0] }}{{ s[-1] }}{{ s[1:3] }}{{ s[::-1] }}{{ s[:-1] }}{{ s[::2] }}|"
     "{{ l[1:] }}{{ l[-2:] }}{{ l[::-1] }}{{ l[5:] }}|{{ d['a'] }}{{ d.a }}{{ d.b.c }}{{ l.0 }}",
     {"s": "h\u00e9llo\U0001F600", "l": [1, 2, 3], "d": {"a": 1, "b": {"c": "C"}}}),
    ("undefined", "[{{ nope }}][{{ d.missing }}][{{ nope is defined }}][{{ d.missing is undefined }}]"
     "[{{ nope | default('dflt') }}][{{ '' | default('e', true) }}][{{ nope | d('d') }}]"
     "[{% for x in nope %}{{ x }}{% endfor %}][{{ nope | length }}][{{ 's'.nomethod }}]",
     {"d": {}}),
    ("tests", "{% for v in vals %}{{ v is string }}{{ v is number }}{{ v is mapping }}"
     "{{ v is iterable }}{{ v is sequence }}{{ v is none }}{{ v is true }}{{ v is false }}"
     "{{ v is boolean }}{{ v is integer }}{{ v is float }}|{% endfor %}"
     "{{ 4 is divisibleby 2 }}{{ 3 is odd }}{{ 3 is even }}{{ 'a' is equalto 'a' }}"
     "{{ 'A' is upper }}{{ 'a' is lower }}{{ 2 is in [1, 2] }}{{ 3 is gt 2 }}{{ 3 is ne 3 }}",
     {"vals": ["s", 1, 1.5, {"a": 1}, [1], None, True, False]}),
    ("string_filters", "{{ s | trim }}|{{ s | upper }}|{{ s | lower }}|{{ s | title }}|"
     "{{ s | capitalize }}|{{ s | replace('l', 'L') }}|{{ s | replace('l', '', 1) }}|"
     "{{ s | length }}|{{ s | count }}|{{ s | first }}|{{ s | last }}|{{ s | list }}|"
     "{{ s | string }}|{{ s | safe }}|{{ '<a href=\"x\">&\\'' | e }}|{{ '<b>' | escape }}|"
     "{{ s | reverse }}|{{ 'x\\ny' | indent(2) }}|{{ 'x\\n\\ny\\n' | indent(2, true) }}|"
     "{{ 'x\\n\\ny' | indent('> ', blank=true) }}|{{ s | title }}|{{ 'ab-cd ef(gh' | title }}", {"s": "  hello wORLD-x\u00e9  "}),
    ("string_methods", "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.strip(' h') }}|"
     "{{ s.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a,b,c'.split(',', 1) }}|"
     "{{ s.startswith('  h') }}|{{ s.endswith(('x', ' ')) }}|{{ s.upper() }}|{{ s.lower() }}|"
     "{{ s.replace('o', '0') }}|{{ s.title() }}|{{ s.capitalize() }}|{{ s.find('l') }}|"
     "{{ s.count('l') }}|{{ '-'.join(['a', 'b']) }}|{{ 'a\\nb\\n'.splitlines() }}|"
     "{{ '{} and {}'.format(1, 'x') }}|{{ 'ab'.rsplit('b') }}|{{ '12'.isdigit() }}|"
     "{{ s.rstrip('\\n ') }}|{{ 'a-b-c'.rsplit('-', 1) }}",
     {"s": "  hello world \n"}),
    ("list_filters", "{{ l | join(', ') }}|{{ l | join }}|{{ l | first }}|{{ l | last }}|"
     "{{ l | length }}|{{ l | unique | list }}|{{ l | reverse | list }}|{{ l | sort }}|"
     "{{ l | sort(reverse=true) }}|{{ l | sum }}|{{ l | min }}|{{ l | max }}|"
     "{{ l | map('string') | join('-') }}|{{ l | select('odd') | list }}|"
     "{{ l | reject('odd') | list }}|{{ l | select | list }}|{{ l | select('gt', 1) | list }}|"
     "{{ l | map('abs') | list }}", {"l": [3, 1, 2, 3, 0]}),
    ("attr_filters", "{{ ms | map(attribute='role') | join(',') }}|"
     "{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }}|"
     "{{ ms | rejectattr('role', 'eq', 'user') | list | length }}|"
     "{{ ms | selectattr('tool_calls') | list | length }}|"
     "{{ ms | selectattr('tool_calls', 'defined') | list | length }}|"
     "{{ ms | map(attribute='missing', default='z') | list }}|"
     "{{ ms | sort(attribute='content') | map(attribute='content') | join }}|"
     "{{ d | dictsort }}|{{ ms | map('tojson') | first }}",
     {"ms": [{"role": "user", "content": "b"},
             {"role": "assistant", "content": "a", "tool_calls": [1]},
             {"role": "user", "content": "c"}], "d": {"b": 2, "a": 1}}),
    ("dict_methods", "{{ d.keys() | list }}|{{ d.values() | list }}|{{ d.items() | list }}|"
     "{{ d.get('a') }}|{{ d.get('z') }}|{{ d.get('z', 5) }}|{{ d | length }}|{{ d | list }}|"
     "{{ d | items | list }}|{{ dict(x=1, y='2') }}|{{ d['a'] is defined }}",
     {"d": {"a": 1, "b": [1, 2]}}),
    ("num_filters", "{{ '42' | int }}|{{ '4.5' | float }}|{{ 3.7 | int }}|{{ 'x' | int }}|"
     "{{ -3 | abs }}|{{ 2.567 | round(2) }}|{{ 2.5 | round }}|{{ 7 | string }}|{{ 1.0 | string }}|"
     "{{ '0x1A' | int(0, 16) }}|{{ 3 | float }}|{{ 'x' | float }}|{{ ' 7 ' | int }}|{{ '1e3' | float }}", {}),
    ("tojson", "{{ v | tojson }}|{{ v | tojson(indent=2) }}|{{ 'caf\u00e9 \"q\" \\n </' | tojson }}|"
     "{{ [] | tojson(indent=4) }}|{{ {} | tojson }}|{{ v | tojson(sort_keys=true) }}|"
     "{{ v | tojson(separators=(',', ':')) }}|{{ 1.0 | tojson }}|{{ none | tojson }}|"
     "{{ 'a\\u0001\\t' | tojson }}|{{ v.n | tojson(indent='\\t') }}",
     {"v": {"z": [1, 2.5, True, None, "\u00e9"], "a": {"n": {}}, "n": [[], {"x": 1}]}}),
    ("globals", "{{ range(3) | list }}{{ range(1, 7, 2) | list }}{{ range(5, 0, -2) | list }}"
     "{{ raise_exception is defined }}{{ strftime_now is defined }}{{ namespace is defined }}"
     "{{ messages | length }}{{ add_generation_prompt }}",
     {"messages": [], "add_generation_prompt": False}),
    ("raise", "{% if messages | length == 0 %}{{ raise_exception('No messages: \"' ~ x ~ '\"') }}"
     "{% endif %}ok", {"messages": [], "x": "1"}),
    ("filter_block_generation", "{% filter upper %}ab{{ 'c' }}{% endfilter %}"
     "{% generation %}gen {{ 1 }}{% endgeneration %}", {}),
    ("if_chain", "{% for v in [0, 1, 2, 3] %}{% if v == 0 %}zero{% elif v == 1 %}one"
     "{% elif v == 2 %}two{% else %}many{% endif %},{% endfor %}", {}),
    ("deep_equal", "{{ m == ms[-1] }}{{ m == ms[0] }}{{ m != ms[0] }}{{ ms[-1] in ms }}",
     {"m": {"role": "u", "c": [1, {"x": None}]},
      "ms": [{"role": "u"}, {"role": "u", "c": [1, {"x": None}]}]}),
    ("str_repr", "{{ ['it\\'s', \"q\\\"\", 'a\\nb', '\u00e9', '\\\\'] }}{{ {'a': (1, 'b')} }}"
     "{{ [1.0, 1e16, 1e-5, 123456789.125, -0.0, 1e300 * 1e300] }}", {}),
    ("call_args", "{% macro m(a, b=2) %}{{ a }}{{ b }}{{ varargs }}{{ kwargs }}{% endmacro %}"
     "{{ m(1) }} {{ m(1, 3) }} {{ m(b=5, a=4) }}", {}),
    ("set_multi", "{% set a, b = 1, 'two' %}{{ a }}{{ b }}{% set t = 1, 2 %}{{ t }}", {}),
    ("markup", "{{ \"it's \"|safe + '<b>' + \"&\" }}|{{ '<i>' + '&'|e }}|{{ ('<' | e) | e }}|"
     "{{ 'x'|safe ~ '<' }}|{{ ('a' | safe) == 'a' }}", {}),
    ("generators", "{% if [] | select %}always-true{% endif %}|{{ xs | map('string') | first }}|"
     "{{ none | selectattr('x') | list }}|{{ nope | map('x') | list }}|"
     "{{ (xs | select('odd'))[0] }}|{{ xs | select('odd') | join(',') }}|"
     "{% for x in xs | reject('odd') %}{{ x }}{% endfor %}|{{ xs | unique | list }}|"
     "{{ 1 in xs | select('odd') }}|{{ {'a': 1} | items | list }}", {"xs": [1, 2, 3]}),
    ("generator_last", "{{ xs | select('odd') | last }}", {"xs": [1, 2, 3]}),
    ("generator_length", "{{ xs | select('odd') | length }}", {"xs": [1, 2, 3]}),
    ("generator_tojson", "{{ xs | map('string') | tojson }}", {"xs": [1, 2, 3]}),
    ("str_plus_int", "{{ 'a' + 1 }}", {}),
    ("unknown_filter_not_taken", "{% if false %}{{ x | from_json }}{% elif false and x is frobnicated %}{% endif %}ok",
     {"x": 1}),
    ("split_slice", "{{ '  a b  c  '.split(None, 1) }}|{{ '  a b  c  '.rsplit(None, 1) }}|"
     "{{ ' a  b '.split() }}|{{ 'a--b--'.split('--') }}|{{ s[1:4] }}|{{ s[-3:] }}|{{ s[-1] }}|"
     "{{ s[10:] }}|{{ s[2:-2:3] }}|{{ s[100:] }}|{{ s[-100:2] }}", {"s": "h\u00e9llo w\u00f6rld\U0001F600"}),
    ("unicode_len", "{{ s | length }} {{ s[2] }} {{ s.upper() }} {{ s | title }}",
     {"s": "\u00e9t\u00e9 \u4f60\U0001F600"}),
]


def render(template, context):
    """Render like apply_chat_template: return (text, None) or (None, error).

    A TemplateError (raise_exception, undefined values) keeps its message,
    which duet must reproduce; Python errors (TypeError...) are recorded as
    "python:<type>", for which duet only has to fail."""
    compiled = ctu._compile_jinja_template(template)
    try:
        return compiled.render(**context), None
    except jinja2.exceptions.TemplateError as exc:
        return None, str(exc)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
        return None, "python:" + type(exc).__name__


def chat_context(messages, add_generation_prompt, bos, eos, extra, normalize=True):
    """The keyword arguments render_jinja_template passes to the template
    (normalize=False: the messages as the client sent them)."""
    extra = dict(extra)
    tools = extra.pop("tools", None)
    if normalize:
        messages = ctu._alias_reasoning_fields(ctu._normalize_chat_messages(messages))
    ctx = {"messages": ctu._plain_template_data(messages),
           "tools": ctu._plain_template_data(tools), "documents": None,
           "add_generation_prompt": add_generation_prompt}
    if bos is not None:
        ctx["bos_token"] = bos
    if eos is not None:
        ctx["eos_token"] = eos
    ctx.update(ctu._plain_template_data(extra))
    return ctx


def through_transformers(template, messages, add_generation_prompt, bos, eos, extra):
    """The same render through transformers' own entry point, as a cross-check."""
    extra = dict(extra)
    tools = extra.pop("tools", None)
    kw = dict(extra)
    if bos is not None:
        kw["bos_token"] = bos
    if eos is not None:
        kw["eos_token"] = eos
    try:
        messages = ctu._normalize_chat_messages(messages)  # as tokenizer.apply_chat_template
        out, _ = ctu.render_jinja_template(conversations=[messages], tools=tools,
                                           chat_template=template,
                                           add_generation_prompt=add_generation_prompt, **kw)
        return out[0], None
    except jinja2.exceptions.TemplateError as exc:
        return None, str(exc)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
        return None, "python:" + type(exc).__name__


def case_record(name, ctx, text, err):
    rec = {"name": name, "context": ctx}
    if err is not None:
        rec["error"] = err
    else:
        rec["expected"] = text
    return rec


def smollm2_template(model):
    from gguf import GGUFReader
    r = GGUFReader(model)
    f = r.fields["tokenizer.chat_template"]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def write(name, data):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    print("wrote", os.path.relpath(path))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-templates", default=DEFAULT_TEMPLATES)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)

    for fixture, src_name, bos, eos, cases in TEMPLATES:
        if src_name is None:
            template = smollm2_template(args.model)
            source = "GGUF tokenizer.chat_template of " + os.path.basename(args.model)
        else:
            with open(os.path.join(args.llama_templates, src_name), encoding="utf-8",
                      newline="") as fh:
                template = fh.read()
            source = "llama.cpp models/templates/" + src_name
        with open(os.path.join(OUT, fixture + ".jinja"), "w", encoding="utf-8",
                  newline="") as fh:
            fh.write(template)
        records = []
        for name, messages, agp, extra in cases:
            text, err = render(template, chat_context(messages, agp, bos, eos, extra))
            check = through_transformers(template, messages, agp, bos, eos, extra)
            if check != (text, err):
                sys.exit(f"{fixture}/{name}: direct render and apply_chat_template path differ")
            raw = chat_context(messages, agp, bos, eos, extra, normalize=False)
            records.append(case_record(name, raw, text, err))
        write(fixture + ".json", {"template": fixture + ".jinja", "source": source,
                                  "bos_token": bos, "eos_token": eos,
                                  "transformers": ctu.__name__, "jinja2": jinja2.__version__,
                                  "cases": records})

    records = []
    for name, template, ctx in CONSTRUCTS:
        text, err = render(template, ctx)
        rec = case_record(name, ctx, text, err)
        rec["template"] = template
        records.append(rec)
    write("constructs.json", {"jinja2": jinja2.__version__, "cases": records})


if __name__ == "__main__":
    main()
