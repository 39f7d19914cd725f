"""Marketer-written templates, rendered in Jinja2's immutable sandbox with bounded size and time.

- No attribute escapes: the sandbox refuses `__class__`, `__mro__`, `__globals__`… and anything unsafe; the
  immutable variant also refuses to mutate lists and dicts.
- No file or network access: no loader, no imports, no includes; the only globals are `range` (capped) and a few
  harmless helpers.
- Bounded: source ≤ 100 KB, loops nest at most 3 deep, `range()` yields at most 1,000 items, output ≤ 512 KB, and
  a render deadline (250 ms) checked on every function call and `*` / `**` (loops are bounded by the range cap
  and the data).
- Email HTML autoescapes variables; SMS, WhatsApp and text bodies do not (they are not HTML).

Templates compile once (cached by source) and render many times: `compiled(source, html=…).render(context)`.
Several templates of one message (an email's subject, preheader, text and HTML) can be compiled into one
(`compiled_parts`), rendered in one pass and split: each part keeps its own scope and escaping.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from html import unescape
from typing import Any

from jinja2 import TemplateSyntaxError, Undefined, meta, nodes, pass_context
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing
from markupsafe import Markup, _escape_inner, escape  # _escape_inner: the C speedup when built

MAX_SOURCE = 100_000
MAX_OUTPUT = 512_000
MAX_RANGE = 1_000
MAX_LOOP_DEPTH = 3
RENDER_SECONDS = 0.25

KNOWN_VARIABLES = {"contact", "campaign", "organisation", "unsubscribe_url", "preferences_url", "message_id"}
# A triggered message's `event` (campaigns.content.render.trigger_event): the event that triggered it.
EVENT_FIELDS = ("id", "type", "properties", "occurred_at")
CONTACT_FIELDS = {
    "external_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "timezone",
    "locale",
    "attributes",
    "created_at",
}


class TemplateProblem(ValueError):
    """A template that cannot be used: bad syntax, or a render that broke a limit or the sandbox."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        where = f"line {self.line}, column {self.column}: " if self.line else ""
        return f"{where}{self.message}"


class _Deadline(threading.local):
    """Per thread: concurrent renders in a threaded server each keep their own deadline."""

    def __init__(self) -> None:
        self.until = float("inf")


_DICT_ATTRIBUTES = frozenset(dir(dict))
_A_DICT: dict[str, Any] = {}


class EventData(dict):
    """A JSON object of an event's properties, in which a key wins over the dict method of the same name:
    `{% for item in event.properties.items %}` loops over the cart's items, not `dict.items`. Event payloads come
    from the organisation's own systems, where keys like items, values or keys are ordinary; contact data keeps
    Jinja's reading (the attribute first)."""

    __slots__ = ()


def event_data(value: Any) -> Any:
    """Event JSON with every object (nested ones too) made an EventData."""
    if isinstance(value, dict):
        return EventData((key, event_data(item)) for key, item in value.items())
    if isinstance(value, list):
        return [event_data(item) for item in value]
    return value


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus a wall-clock deadline checked on every function call and bounds on the
    operators that can blow up memory in one step (`"x" * 10**9`, `2 ** 10**9`)."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.deadline = _Deadline()
        self.globals = {"range": self._bounded_range}

    def _check(self) -> None:
        if time.monotonic() > self.deadline.until:
            raise TemplateProblem("The template took too long to render.")

    @staticmethod
    def _bounded_range(*args: int) -> range:
        produced = range(*args)
        if len(produced) > MAX_RANGE:
            raise TemplateProblem(f"range() may produce at most {MAX_RANGE} items.")
        return produced

    def getattr(self, obj: Any, attribute: str) -> Any:
        # `contact.first_name` on a plain dict: the sandbox first tries the Python attribute, and the AttributeError
        # it raises costs more than the rest of the lookup. A name that no dict has as an attribute can only be
        # an item, so look it up as one straight away (same result; dict methods still go through the sandbox).
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        if type(obj) is EventData:
            if attribute in obj:
                return obj[attribute]
            if attribute not in _DICT_ATTRIBUTES:
                # Reported as for any JSON object ("'dict object' has no attribute 'cart'"), not by class path.
                return self.undefined(obj=_A_DICT, name=attribute)
        return super().getattr(obj, attribute)

    def call(self, context: Any, obj: Any, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return super().call(context, obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self._check()
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 100:
            raise TemplateProblem("Exponents above 100 are not allowed in templates.")
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if (
                    isinstance(sequence, (str, list, tuple))
                    and isinstance(times, int)
                    and len(sequence) * times > MAX_OUTPUT
                ):
                    raise TemplateProblem(f"The rendered text is over {MAX_OUTPUT // 1000} KB.")
        return super().call_binop(context, operator, left, right)


_HTML = BoundedEnvironment(autoescape=True, undefined=Undefined)
_TEXT = BoundedEnvironment(autoescape=False, undefined=Undefined)


_new_markup = str.__new__


def _escape(value: Any) -> Markup:
    """markupsafe.escape, without its Markup constructor's Python frame for a plain string (the usual value): the
    same Markup, built directly. A 3 KB email escapes some 20 values."""
    if type(value) is str:
        return _new_markup(Markup, _escape_inner(value))
    return escape(value)


@pass_context
def _track_filter(context: Any, value: str) -> Markup | str:
    """`{% filter cs_track %}` around a templated href: the rendered URL, routed through tracking (escaped where
    the output is HTML, as is in a text part)."""
    track = context.resolve_or_missing("cs_track")
    if context.eval_ctx.autoescape:
        if track is missing:  # a template using the filter itself, outside a tracked email render
            return _escape(value)
        return _escape(track(unescape(str(value))))
    return str(value) if track is missing else track(str(value).strip())


_HTML.filters["cs_track"] = _track_filter
_TEXT.filters["cs_track"] = _track_filter


def _column(source: str, line: int | None, message: str) -> int:
    """Jinja reports lines only; point at the quoted token of the message on that line, or its first tag."""
    if not line:
        return 1
    lines = source.splitlines() or [""]
    text = lines[min(line, len(lines)) - 1]
    quoted = re.search(r"'([^']+)'", message)
    if quoted and quoted.group(1) in text:
        return text.index(quoted.group(1)) + 1
    tag = re.search(r"\{[{%#]", text)
    return tag.start() + 1 if tag else 1


def _loop_depth(node: nodes.Node, depth: int = 0) -> int:
    deepest = depth
    for child in node.iter_child_nodes():
        deepest = max(deepest, _loop_depth(child, depth + isinstance(child, nodes.For)))
    return deepest


@dataclass
class CompiledTemplate:
    source: str
    html: bool
    template: Any
    variables: set[str] = field(default_factory=set)
    constant: str | None = None  # plain text with no template code renders as itself

    def render(self, context: Mapping[str, Any]) -> str:
        if self.constant is not None:
            return self.constant
        environment = _HTML if self.html else _TEXT
        return self.render_variables({**environment.globals, **context})

    def render_variables(self, variables: dict[str, Any]) -> str:
        """Render with `variables` as the template's whole namespace, globals included (`render_globals()`), used
        as is: bulk rendering builds it from a per-run prototype instead of having Jinja copy it twice per call."""
        if self.constant is not None:
            return self.constant
        environment = _HTML if self.html else _TEXT
        template = self.template
        environment.deadline.until = time.monotonic() + RENDER_SECONDS
        try:
            # One join of the whole output (much faster than generate()); the deadline and the bounded
            # range/multiplication keep what a template can produce before the size check below small.
            output = environment.concat(template.root_render_func(template.new_context(variables, shared=True)))
        except SecurityError as exc:
            raise TemplateProblem(f"Not allowed in a template: {exc}") from exc
        except (TemplateError, TypeError, ValueError, ArithmeticError, UndefinedError, LookupError) as exc:
            if isinstance(exc, TemplateProblem):
                raise
            raise TemplateProblem(f"The template failed to render: {exc}") from exc
        finally:
            environment.deadline.until = float("inf")
        if len(output) > MAX_OUTPUT:
            raise TemplateProblem(f"The rendered text is over {MAX_OUTPUT // 1000} KB.")
        return output


def _from_tree(environment: BoundedEnvironment, tree: nodes.Template) -> Any:
    template = environment.from_string(tree)
    # Compiled template code calls the `escape` of its own module namespace for every autoescaped output.
    template.root_render_func.__globals__["escape"] = _escape
    return template


@lru_cache(maxsize=2048)
def compiled(source: str, *, html: bool) -> CompiledTemplate:
    """Parse and compile once; raises TemplateProblem (with line and column) for unusable templates."""
    if len(source) > MAX_SOURCE:
        raise TemplateProblem(f"A template is at most {MAX_SOURCE // 1000} KB.")
    environment = _HTML if html else _TEXT
    try:
        tree = environment.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(
            exc.message or "Syntax error", line=exc.lineno, column=_column(source, exc.lineno, exc.message or "")
        ) from exc
    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        raise TemplateProblem("Templates cannot include, import or extend other templates.", line=node.lineno, column=1)
    if _loop_depth(tree) > MAX_LOOP_DEPTH:
        raise TemplateProblem(f"Loops nest at most {MAX_LOOP_DEPTH} deep.")
    plain = "{" not in source and "%}" not in source and "#}" not in source
    return CompiledTemplate(
        source=source,
        html=html,
        template=_from_tree(environment, tree),
        variables=meta.find_undeclared_variables(tree),
        constant=source if plain else None,
    )


def render_globals() -> dict[str, Any]:
    """The names every template sees besides its context (both environments have the same)."""
    return dict(_HTML.globals)


# Between the parts of a composed template's output. Random per process: neither a template nor a contact's data
# can know it, so it cannot be forged to shift one part into another (and a wrong count of parts is refused).
SEPARATOR = f"\x00cs-{secrets.token_hex(12)}\x00"


@dataclass
class CompiledParts:
    """Templates rendered in one pass and split into their outputs, each at most MAX_OUTPUT."""

    sources: tuple[tuple[str, bool], ...]
    combined: CompiledTemplate | None  # None: rendered one by one (a part uses blocks, which cannot be combined)

    def render_variables(self, variables: dict[str, Any]) -> list[str]:
        if self.combined is not None:
            parts = self.combined.render_variables(variables).split(SEPARATOR)
            if len(parts) == len(self.sources):
                for part in parts:
                    if len(part) > MAX_OUTPUT:
                        raise TemplateProblem(f"The rendered text is over {MAX_OUTPUT // 1000} KB.")
                return parts
        return [compiled(source, html=html).render_variables(variables) for source, html in self.sources]


@lru_cache(maxsize=512)
def compiled_parts(sources: tuple[tuple[str, bool], ...]) -> CompiledParts:
    """Compile (source, html) pairs into one template that renders them all in one pass: one context and one
    render call per message instead of one per part. Each part is first compiled on its own (so its problems are
    reported against its own source, with its limits); in the combined template it keeps its own scope (a `set`
    in one part is not seen by the next) and its own escaping (a text part inside `autoescape false`)."""
    for source, html in sources:
        compiled(source, html=html)
    body: list[nodes.Node] = []
    for index, (source, html) in enumerate(sources):
        tree = _HTML.parse(source)
        if any(True for _ in tree.find_all(nodes.Block)):
            return CompiledParts(sources, None)
        if index:
            body.append(nodes.Output([nodes.TemplateData(SEPARATOR, lineno=1)], lineno=1))
        part: nodes.Node = nodes.Scope(tree.body, lineno=1)
        if not html:
            option = nodes.Keyword("autoescape", nodes.Const(False, lineno=1), lineno=1)
            part = nodes.ScopedEvalContextModifier([option], [part], lineno=1)
        body.append(part)
    tree = nodes.Template(body, lineno=1)
    tree.set_environment(_HTML)
    combined_source = SEPARATOR.join(source for source, _ in sources)  # a cache key and a name, never parsed
    return CompiledParts(
        sources,
        CompiledTemplate(
            source=combined_source,
            html=True,
            template=_from_tree(_HTML, tree),
            variables=set().union(*(compiled(s, html=h).variables for s, h in sources)),
        ),
    )


def template_warnings(
    source: str,
    *,
    html: bool,
    attribute_names: set[str] | frozenset[str] = frozenset(),
    event_type: str = "",
    event_properties: frozenset[str] | None = None,
) -> list[str]:
    """Names the template uses that no message will provide (they render empty, or fail the message when used
    further): worth a look, not an error. `event_type` is a triggered campaign's event (only its templates have
    `event`); `event_properties` the properties the event catalogue has seen on that type (None: none seen yet,
    nothing to check against)."""
    template = compiled(source, html=html)
    environment = _HTML if html else _TEXT
    tree = environment.parse(source)
    known = (KNOWN_VARIABLES | {"event"}) if event_type else KNOWN_VARIABLES
    warnings = []
    for name in sorted(template.variables - known - set(environment.globals)):
        if name == "event":
            warnings.append("Unknown variable 'event': only triggered campaigns have an event.")
        else:
            warnings.append(f"Unknown variable {name!r}.")
    for node in tree.find_all(nodes.Getattr):
        chain = _attribute_chain(node)
        if chain and chain[0] == "contact":
            if len(chain) >= 2 and chain[1] not in CONTACT_FIELDS:
                warnings.append(f"Unknown contact field {'.'.join(chain[:2])!r}.")
            elif len(chain) >= 3 and chain[1] == "attributes" and chain[2] not in attribute_names:
                warnings.append(f"No contact has the attribute {chain[2]!r} yet.")
        elif chain and chain[0] == "event" and event_type:
            if len(chain) >= 2 and chain[1] not in EVENT_FIELDS:
                warnings.append(f"Unknown event field {'.'.join(chain[:2])!r}; an event has {', '.join(EVENT_FIELDS)}.")
            elif (
                len(chain) >= 3
                and chain[1] == "properties"
                and event_properties is not None
                and chain[2] not in event_properties
            ):
                warnings.append(f"No {event_type!r} event has had the property {chain[2]!r} yet.")
    return sorted(set(warnings))


def _attribute_chain(node: nodes.Getattr) -> list[str]:
    names: list[str] = []
    current: Any = node
    while isinstance(current, nodes.Getattr):
        names.append(current.attr)
        current = current.node
    if isinstance(current, nodes.Name):
        return [current.name, *reversed(names)]
    return []


def render(source: str, context: Mapping[str, Any], *, html: bool) -> str:
    return compiled(source, html=html).render(context)
