"""Sandboxed templates: what renders, what is refused, and the limits."""

from __future__ import annotations

import time

import pytest

from campaigns.content.templates import TemplateProblem, compiled, render, template_warnings

CONTEXT = {
    "contact": {"first_name": "Ada", "email": "ada@example.com", "attributes": {"plan": "pro", "points": 120}},
    "campaign": {"name": "Spring"},
    "unsubscribe_url": "https://example.com/u/abc",
}


def test_variables_filters_and_defaults():
    assert (
        render("Hi {{ contact.first_name }}, you are on {{ contact.attributes.plan|upper }}", CONTEXT, html=False)
        == "Hi Ada, you are on PRO"
    )
    assert render('Hi {{ contact.last_name | default("there") }}', CONTEXT, html=False) == "Hi there"
    assert render("{{ contact.attributes.missing }}", CONTEXT, html=False) == ""
    assert (
        render("{% if contact.attributes.points > 100 %}Gold{% else %}Silver{% endif %}", CONTEXT, html=False) == "Gold"
    )


def test_html_autoescapes_but_text_does_not():
    context = {"contact": {"first_name": "<script>alert(1)</script>"}}
    assert render("<p>{{ contact.first_name }}</p>", context, html=True) == (
        "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"
    )
    assert render("{{ contact.first_name }}", context, html=False) == "<script>alert(1)</script>"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ contact.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ self.__init__.__globals__ }}",
        "{{ range.__self__ }}",
        "{{ contact.attributes.update({'plan': 'free'}) }}",
        "{{ [].append(1) }}",
        "{{ ''.format.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ request }}{{ config }}{{ settings.SECRET_KEY }}",
    ],
)
def test_sandbox_escapes_fail_or_yield_nothing(source):
    try:
        output = render(source, CONTEXT, html=False)
    except TemplateProblem:
        return
    # Whatever rendered must not expose Python internals.
    assert "class" not in output and "function" not in output and "module" not in output and "os" not in output


@pytest.mark.parametrize(
    "source",
    [
        "{% include 'x.html' %}",
        "{% extends 'base.html' %}",
        "{% import 'm.html' as m %}",
        "{% from 'm.html' import x %}",
    ],
)
def test_no_file_access(source):
    with pytest.raises(TemplateProblem, match="include, import or extend"):
        compiled(source, html=True)


def test_syntax_errors_give_line_and_column():
    with pytest.raises(TemplateProblem) as caught:
        compiled("Hello\n{{ contact.first_name }\nBye", html=False)
    assert caught.value.line == 2
    assert caught.value.column >= 1
    with pytest.raises(TemplateProblem) as caught:
        compiled("ok\nok\n  {% if x %}never closed", html=False)
    assert caught.value.line is not None


def test_limits():
    with pytest.raises(TemplateProblem, match="range"):
        render("{% for i in range(100000) %}{% endfor %}", {}, html=False)
    with pytest.raises(TemplateProblem, match="KB"):
        render("{% for i in range(1000) %}{{ 'x' * 1000 }}{% endfor %}", {}, html=False)
    with pytest.raises(TemplateProblem, match="nest"):
        compiled(
            "{% for a in x %}{% for b in x %}{% for c in x %}{% for d in x %}{% endfor %}{% endfor %}"
            "{% endfor %}{% endfor %}",
            html=False,
        )
    with pytest.raises(TemplateProblem, match="at most"):
        compiled("x" * 100_001, html=False)


def test_a_slow_template_is_stopped():
    started = time.monotonic()
    with pytest.raises(TemplateProblem, match="too long"):
        render(
            "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}"
            "{% if c < 0 %}never{% endif %}{% endfor %}{% endfor %}{% endfor %}",
            {},
            html=False,
        )
    assert time.monotonic() - started < 2


def test_templates_compile_once():
    assert compiled("Hi {{ contact.first_name }}", html=False) is compiled("Hi {{ contact.first_name }}", html=False)


def test_unknown_variables_are_warnings():
    warnings = template_warnings(
        "{{ contact.first_name }} {{ contact.nickname }} {{ contact.attributes.plan }} {{ contact.attributes.tier }}"
        " {{ coupon }} {{ unsubscribe_url }}",
        html=True,
        attribute_names={"plan"},
    )
    assert warnings == [
        "No contact has the attribute 'tier' yet.",
        "Unknown contact field 'contact.nickname'.",
        "Unknown variable 'coupon'.",
    ]


def test_internal_filters_are_not_reachable_from_marketer_templates():
    # The tracking rewrite's filter has an internal name no template can spell (tests/test_template_bounds.py).
    with pytest.raises(TemplateProblem, match="No filter named 'cs_track'"):
        compiled("{% filter cs_track %}https://x.example/{% endfilter %}", html=True)


def test_dict_lookups_keep_the_sandbox_semantics():
    context = {"contact": {"first_name": "Ada", "items": "a key", "_secret": "s", "attributes": {}}}
    # A dict attribute wins over a key of the same name, as in Jinja; methods that mutate stay refused.
    assert render("{{ contact.items is callable }}", context, html=False) == "True"
    assert render("{{ contact.first_name }}|{{ contact.missing }}|{{ contact._secret }}", context, html=False) == (
        "Ada||s"
    )
    with pytest.raises(TemplateProblem):
        render("{{ contact.attributes.setdefault('plan', 'free') }}", context, html=False)
    assert context["contact"]["attributes"] == {}
