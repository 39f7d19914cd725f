"""A marketer's template cannot hurt the system: every render stays within a time and memory budget whatever the
template and its data, a template over it is refused at save with a clear message, a message whose render breaks
it fails once with its reason while the rest of the run is sent, and internal helpers cannot be reached by name.

The adversarial templates are each measured where it matters: the exception a caller gets, the wall-clock time to
get it and the peak memory (tracemalloc) of the render."""

from __future__ import annotations

import email
import time
import tracemalloc
from email import policy

import pytest

from audiences.contacts import contacts_upsert_rows
from audiences.models import Contact
from campaigns.content.render import Renderer, Sender
from campaigns.content.templates import (
    TemplateProblem,
    TemplateTooCostly,
    compiled,
    render,
    render_globals,
    template_warnings,
)
from campaigns.models import Campaign, Variant
from delivery import runs, sending
from delivery.backends import reset_backends
from delivery.models import Message, Run
from tests.factories import CampaignFactory, console_client

SECONDS = 1.0  # of CPU: a hostile template is refused within this (the render budget is 250 ms of CPU)
PEAK_BYTES = 32 * 1024 * 1024

BIG = "{% set big = 'x' * 400000 %}"

# (template, what the refusal says)
ADVERSARIAL = [
    # From the issue: a recursive macro (was a RecursionError: preview 500, send crash-loop).
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "call themselves at most 20 deep"),
    # Loops without function calls (10^9 iterations; 10^8 took 3.7 s).
    (
        "{% set l = range(1000)|list %}{% for a in l %}{% for b in l %}{% for c in l %}{% endfor %}{% endfor %}"
        "{% endfor %}",
        "too long",
    ),
    ("{% set l = 'x' * 400000 %}{% for c in l %}{% endfor %}", "too long"),
    ("{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}", "too long"),
    # Filters and methods building 100-500 MB strings before the size check ran.
    ("{{ 'x'|center(100000000) }}", "width of center is at most 1,000"),
    ("{{ 'x'.center(100000000) }}", "width of center() is at most 1,000"),
    ("{{ 'x'.ljust(100000000) }}{{ 'x'.zfill(100000000) }}", "at most 1,000"),
    ("{{ ('a\n' * 100000)|indent(1000) }}", "KB of text while rendering"),
    ("{{ 'x\n'|indent(' ' * 100000000) }}", "KB"),
    ("{{ '%0100000000d' % 1 }}", "format width or precision is at most 1,000"),
    ("{{ '%0*d' % (100000000, 1) }}", "format width or precision is at most 1,000"),
    ("{{ '%.100000000f' % 1.5 }}", "format width or precision is at most 1,000"),
    ("{{ '%0100000000d'|format(1) }}", "format width or precision is at most 1,000"),
    ("{{ '{:>100000000}'.format(1) }}", "format width or precision is at most 1,000"),
    ("{{ '{:{w}}'.format(1, w=100000000) }}", "format width or precision is at most 1,000"),
    ("{{ ('x' * 500000)|replace('x', 'yyyyyyyyyy') }}", "KB of text while rendering"),
    ("{{ ('x' * 500000).replace('x', 'yyyyyyyyyy') }}", "KB of text while rendering"),
    ("{{ ('\t' * 1000).expandtabs(100000000) }}", "at most 1,000"),
    # One big value repeated: by reference it costs nothing until something joins or prints it.
    (BIG + "{{ ([big] * 1000)|join }}", "KB of text while rendering"),
    (BIG + "{{ [big] * 1000 }}", "KB of text while rendering"),
    (BIG + "{{ ([{'a': big}] * 1000)|map(attribute='a')|join }}", "KB of text while rendering"),
    (BIG + "{{ ([big] * 1000)|map('upper')|list|length }}", "KB of text while rendering"),
    (BIG + "{{ [big, big, big, big, big, big, big, big, big, big]|string }}", "KB of text while rendering"),
    (BIG + "{{ ([big] * 100)|tojson }}", "KB of text while rendering"),
    (BIG + "{{ '%s%s%s%s%s%s%s%s%s%s' % (big, big, big, big, big, big, big, big, big, big) }}", "KB of text"),
    (BIG + "{{ '%(a)s%(a)s%(a)s%(a)s%(a)s%(a)s%(a)s%(a)s%(a)s' % {'a': big} }}", "KB of text"),
    (BIG + "{{ '{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}'.format(big) }}", "KB of text while rendering"),
    (BIG + "{% set l = [big[1:], big[2:], big[3:], big[4:], big[5:], big[6:], big[7:], big[8:]] %}", "KB of text"),
    (BIG + "{{ big|upper ~ big|upper ~ big|upper ~ big|upper ~ big|upper ~ big|upper ~ big|upper }}", "KB"),
    (BIG + "{% for i in range(1000) %}{{ big }}{% endfor %}", "KB of text while rendering"),
    (
        "{% macro m(s) %}{% for i in range(1000) %}{{ s }}{% endfor %}{% endmacro %}" + BIG + "{{ m(big)|length }}",
        "KB of text while rendering",
    ),
    ("{% for i in range(1000) %}" + "x" * 50000 + "{% endfor %}", "KB of text while rendering"),
    # Doubling through recursion: strings, numbers.
    ("{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ f('x' * 1000, 30) }}", "KB"),
    ("{% macro f(x, n) %}{% if n %}{{ f(x * x, n - 1) }}{% endif %}{% endmacro %}{{ f(10 ** 100, 30) }}", "bits"),
    ("{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}", "call themselves at most 20 deep"),
    # Counts, inputs and calls that are bounded outright.
    ("{{ range(1000)|batch(100000000, 'x')|list|length }}", "batch's count is at most 1,000"),
    ("{{ [1]|slice(100000000, 'x')|list|length }}", "slice's count is at most 1,000"),
    ("{{ [[1] * 1000] * 1000|sum(start=[]) }}", "sum adds numbers only"),
    ("{{ (' ' * 500000)|list|length }}", "KB of text while rendering"),
    ("{{ ('.' * 9000 + 'a.')|urlize }}", "urlize takes words of at most a few hundred characters"),
    ("{{ ('a' * 20000)|wordwrap(1) }}", "wordwrap takes at most 10,000 characters"),
    (BIG + "{{ ([big] * 100)|pprint }}", "pprint takes values of at most 50,000 characters"),
    ("{{ (5).to_bytes(1000000000, 'big') }}", "to_bytes() cannot be used"),
    ("{{ 'ab'.translate({97: 'x' * 500000}) }}", "translate() cannot be used"),
    # Containers built by a method count by their items (each dict here costs some 60 KB).
    ("{% set l = range(1000) %}{% set d = [" + "{}.fromkeys(l), " * 100 + "] %}", "KB of text while rendering"),
    ("{{ 2 ** 1000 }}", "Exponents above 100"),
    ("{% set g = 10 ** 100 %}{{ g * g * g * g * g * g * g * g * g * g * g * g * g * g }}", "bits"),
]


def _measured(source: str, *, compile_too: bool = True) -> tuple[BaseException | None, float, int]:
    """(what the render raised, CPU seconds, peak bytes). CPU time of this thread: the machine running the tests is
    shared, and the render budget is CPU time too."""
    template = None if compile_too else compiled(source, html=True)
    tracemalloc.start()
    started = time.thread_time()
    raised: BaseException | None = None
    try:
        template = template or compiled(source, html=True)
        template.render_variables({**render_globals(), "contact": {"attributes": {}}})
    except Exception as exc:  # the test asserts it is exactly the expected kind below
        raised = exc
    elapsed = time.thread_time() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return raised, elapsed, peak


@pytest.mark.parametrize(("source", "reason"), ADVERSARIAL, ids=[f"adversarial-{i}" for i in range(len(ADVERSARIAL))])
def test_it_refuses_a_hostile_template_quickly_and_in_little_memory(source, reason):
    compiled.cache_clear()  # the compile is part of what a hostile template costs
    raised, elapsed, peak = _measured(source)
    assert isinstance(raised, TemplateTooCostly), repr(raised)
    assert reason in str(raised)
    assert elapsed < SECONDS
    assert peak < PEAK_BYTES


def test_it_stops_a_loop_whose_body_is_long_but_calls_nothing():
    # 40 x 1,000 items, within the steps if each counted one; each evaluates a 3,000-item list literal (120 million
    # evaluations, minutes) and has no call, filter or comparison that would tick the clock. The body's size
    # weighs each item. (Compiled first: the literal alone takes Jinja a quarter of a second to compile.)
    source = (
        "{% for a in range(40) %}{% for b in range(1000) %}{% set x = [" + "a, " * 3000 + "] %}{% endfor %}{% endfor %}"
    )
    raised, elapsed, peak = _measured(source, compile_too=False)
    assert isinstance(raised, TemplateTooCostly), repr(raised)
    assert "too long" in str(raised)
    assert elapsed < SECONDS
    assert peak < PEAK_BYTES


@pytest.mark.parametrize(
    "comparison", ["{{ 'xy' in b }}", "{{ 'xy' is in b }}", "{{ b.count('y') }}", "{% if 'xy' not in b %}{% endif %}"]
)
def test_it_stops_many_comparisons_on_a_big_value(comparison):
    # Each takes time in the value's length and builds nothing: the clock still ticks on every one. (Compiled
    # first: parsing 60 KB of template takes Jinja a second on its own.)
    source = "{% set b = 'x' * 500000 ~ 'x' * 500000 %}" + comparison * (60_000 // len(comparison))
    raised, elapsed, peak = _measured(source, compile_too=False)
    assert isinstance(raised, TemplateTooCostly), repr(raised)
    assert "too long" in str(raised)
    assert elapsed < SECONDS
    assert peak < PEAK_BYTES


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nests expressions too deeply"),
        ("{{ 1" + "|string" * 3000 + " }}", "nest at most 50 deep"),
        ("{{ x" + ".a" * 200 + " }}", "nest at most 50 deep"),
        ("{{ [" + "[" * 300 + "]" * 300 + "]|string }}", "nest"),
        ("{% if x %}" * 3000 + "{% endif %}" * 3000, "nests expressions too deeply"),
    ],
)
def test_it_refuses_templates_nested_too_deeply_to_compile(source, reason):
    started = time.monotonic()
    with pytest.raises(TemplateProblem, match=reason):
        compiled(source, html=False)
    assert time.monotonic() - started < 2 * SECONDS


def test_templates_within_the_budget_render_as_before():
    context = {
        "contact": {"first_name": "Ada", "attributes": {"picks": ["shoes", "bags"], "points": 120, "bio": "a b"}}
    }
    source = (
        "{% macro row(item, n) %}<li>{{ n }}. {{ item|title }}</li>{% endmacro %}"
        "{% for item in contact.attributes.picks %}{{ row(item, loop.index) }}{% endfor %}"
        "|{{ '%05d' % contact.attributes.points }}|{{ '{:>6}'.format('x') }}|{{ 'ab'|center(6) }}|"
        "{{ contact.first_name[1:] }}|{{ contact.attributes.bio|replace(' ', '-') }}|{{ [1, 2]|join(',') }}|"
        "{{ 'x' * 3 ~ 'y' }}|{{ range(3)|list }}|{{ 7 * 6 }}|{{ 2 ** 10 }}|{{ ('a\nb')|indent(2) }}"
    )
    assert render(source, context, html=True) == (
        "<li>1. Shoes</li><li>2. Bags</li>|00120|     x|  ab  |da|a-b|1,2|xxxy|[0, 1, 2]|42|1024|a\n  b"
    )
    # A big but legitimate message: 1,000 rows of about 400 characters, built by a macro.
    rows = "{% macro r(i) %}<tr><td>{{ i }}</td><td>" + "y" * 380 + "</td></tr>{% endmacro %}"
    big = render(rows + "{% for i in range(1000) %}{{ r(i) }}{% endfor %}", {}, html=True)
    assert big == "".join(f"<tr><td>{i}</td><td>{'y' * 380}</td></tr>" for i in range(1000))


def test_the_budget_is_per_render_not_per_process():
    template = compiled("{% for i in range(1000) %}{{ 'x' * 400 }}{% endfor %}", html=False)
    for _ in range(50):  # 50 renders of 400 KB each: each within its own budget
        assert len(template.render_variables({**render_globals()})) == 400_000


# --- internal helpers -------------------------------------------------------------------------------------------------


def test_internal_helpers_are_unknown_names():
    sender = Sender(organisation_id="o1", organisation_name="Acme", postal_address="1 Main St", tracking=True)
    content = {
        "subject": "s{{ cs_track }}{{ cs_click }}",
        "html": '<a href="https://acme.example/a">a</a><a href="https://acme.example/{{ contact.first_name }}">b</a>'
        "<p>[{{ cs_track }}][{{ cs_click }}][{{ cs_track_url }}]</p>",
    }
    rendered = Renderer("email", content, sender).render("m1", {"first_name": "ada", "attributes": {}}, "c1")
    assert rendered["subject"] == "s"
    assert "<p>[][][]</p>" in rendered["html"]
    # The tracking rewrite still works: both links go through click tracking.
    assert rendered["html"].count('href="http://testserver/t/c/') + rendered["html"].count("/t/c/") >= 2
    assert "https://acme.example/a" not in rendered["html"] and "https://acme.example/ada" not in rendered["html"]
    assert template_warnings("{{ cs_track }} {{ cs_click }}", html=True) == [
        "Unknown variable 'cs_click'.",
        "Unknown variable 'cs_track'.",
    ]
    with pytest.raises(TemplateProblem, match="No filter named 'cs_track'"):
        compiled("{% filter cs_track %}https://x.example/{% endfilter %}", html=True)


# --- at save ----------------------------------------------------------------------------------------------------------

RECURSIVE = "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"


@pytest.mark.django_db
def test_a_template_over_the_budget_is_refused_when_saved(teammate):
    response = teammate.api.post(
        "/api/v1/campaigns/",
        {
            "name": "Hostile",
            "channels": ["email"],
            "variants": [
                {
                    "name": "A",
                    "allocation_percent": 100,
                    "content": {"email": {"subject": "Hi", "html": "<p>" + RECURSIVE + "</p>"}},
                }
            ],
        },
        format="json",
    )
    assert response.status_code == 400
    assert "html: Macros and loops call themselves at most 20 deep." in str(response.data["variants"])
    assert Campaign.objects.count() == 0
    library = teammate.api.post(
        "/api/v1/content-templates/",
        {"name": "Loop", "channel": "sms", "content": {"body": "{{ 'x'|center(100000000) }}"}},
        format="json",
    )
    assert library.status_code == 400
    assert library.data["content"] == ["body: The width of center is at most 1,000."]


@pytest.mark.django_db
def test_a_template_that_fails_only_on_some_data_is_saved(teammate):
    # Costly only for contacts with a given attribute: the sample message does not have it, sends fail those.
    response = teammate.api.post(
        "/api/v1/content-templates/",
        {
            "name": "Sometimes",
            "channel": "sms",
            "content": {"body": "{% if contact.attributes.evil %}{{ 'x'|center(contact.attributes.evil) }}{% endif %}"},
        },
        format="json",
    )
    assert response.status_code == 201, response.data


@pytest.mark.django_db
def test_a_preview_of_a_costly_render_is_a_400_with_the_reason(teammate):
    # Was a RecursionError: a 500. Saved, since the sample message does not take the costly branch.
    contacts_upsert_rows(
        organisation=teammate.organisation,
        rows=[
            {"external_id": "evil", "first_name": "E", "attributes": {"evil": True}},
            {"external_id": "fine", "first_name": "F", "attributes": {}},
        ],
    )
    body = (
        "{% macro f() %}{{ f() }}{% endmacro %}"
        "Hi {{ contact.first_name }}{% if contact.attributes.evil %}{{ f() }}{% endif %}"
    )
    created = teammate.api.post(
        "/api/v1/campaigns/",
        {
            "name": "Sometimes",
            "channels": ["sms"],
            "variants": [{"name": "A", "allocation_percent": 100, "content": {"sms": {"body": body}}}],
        },
        format="json",
    )
    assert created.status_code == 201, created.data
    url = f"/api/v1/campaigns/{created.data['id']}/preview/"
    contacts = dict(Contact.objects.filter(organisation=teammate.organisation).values_list("external_id", "pk"))
    evil = teammate.api.post(url, {"channel": "sms", "contact_id": contacts["evil"]}, format="json")
    assert evil.status_code == 400
    assert evil.data == {"content": ["Macros and loops call themselves at most 20 deep."]}
    fine = teammate.api.post(url, {"channel": "sms", "contact_id": contacts["fine"]}, format="json")
    assert fine.status_code == 200, fine.data
    assert fine.data["rendered"]["body"] == "Hi F"


# --- at send ----------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_send_fails_the_messages_whose_render_breaks_the_budget_and_sends_the_rest(
    settings, smtp, teammate, django_capture_on_commit_callbacks
):
    reset_backends()
    settings.DELIVERY_BACKENDS = {
        "default": "delivery.sandbox.SandboxBackend",
        "email": "delivery.channels.EmailBackend",
    }
    organisation = teammate.organisation
    organisation.sender_email, organisation.sender_name = "news@acme.example", "Acme"
    organisation.postal_address = "1 Main Street, London"
    organisation.save()
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {
                "external_id": f"k{i}",
                "email": f"k{i}@example.com",
                "first_name": f"N{i}",
                "attributes": {"evil": i % 3 == 0},
            }
            for i in range(9)
        ],
    )
    campaign = CampaignFactory(organisation=organisation, channels=["email"], variants=False)
    html = (
        "{% macro f() %}{{ f() }}{% endmacro %}"
        "<p>Hi {{ contact.first_name }}</p>{% if contact.attributes.evil %}{{ f() }}{% endif %}"
    )
    Variant.objects.create(
        campaign=campaign, name="A", allocation_percent=100, content={"email": {"subject": "Hi", "html": html}}
    )
    with django_capture_on_commit_callbacks(execute=False):
        response = teammate.api.post(f"/api/v1/campaigns/{campaign.pk}/send-now/")
        assert response.status_code == 200, response.data
        run = Run.objects.get(campaign=campaign)
        runs.run_prepare(run.pk)
        started = time.monotonic()
        sending.run_send_for(run.pk, seconds=30)
        elapsed = time.monotonic() - started
        runs.run_finish_if_done(run.pk)
    run.refresh_from_db()
    assert run.status == "completed"
    assert (run.sent_count, run.failed_count) == (6, 3)
    failed = Message.objects.filter(run=run, status="failed").select_related("contact")
    assert sorted(m.contact.external_id for m in failed) == ["k0", "k3", "k6"]
    assert {(m.attempts, m.error) for m in failed} == {
        (1, "template: Macros and loops call themselves at most 20 deep.")
    }
    received = sorted(rcpt[0] for _f, rcpt, _raw in smtp.messages)
    assert received == [f"k{i}@example.com" for i in (1, 2, 4, 5, 7, 8)]
    bodies = [email.message_from_bytes(raw, policy=policy.default) for _f, _r, raw in smtp.messages]
    assert all("Hi N" in m.get_body(("html",)).get_content() for m in bodies)
    assert elapsed < 10
    reset_backends()


@pytest.mark.django_db
def test_the_console_shows_a_budget_problem_inline_and_saves_nothing(teammate):
    campaign = CampaignFactory(organisation=teammate.organisation, channels=["email", "sms"], variants=False)
    form = {
        "v-0-name": "A",
        "v-0-allocation": "100",
        "v-0-email-subject": "Hi",
        "v-0-email-html": "<p>{{ '%0100000000d' % 1 }}</p>",
        "v-0-sms-body": "Short",
    }
    client = console_client(teammate)
    saved = client.post(f"/campaigns/{campaign.pk}/content/", {**form, "save": "1"})
    assert saved.status_code == 400
    assert "email.html: A format width or precision is at most 1,000." in saved.content.decode()
    assert not Campaign.objects.get(pk=campaign.pk).variants.exists()
    # The live preview of the unsaved form says the same instead of rendering (it was a 100 MB string).
    preview = client.post(f"/campaigns/{campaign.pk}/content/preview/", {**form, "preview_channel": "email"})
    assert preview.status_code == 200
    assert "A format width or precision is at most 1,000." in preview.content.decode()
