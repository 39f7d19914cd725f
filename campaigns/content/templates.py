"""Marketer-written templates, rendered in Jinja2's immutable sandbox within a budget that holds for any input.

- No attribute escapes: the sandbox refuses `__class__`, `__mro__`, `__globals__`… and anything unsafe; the
  immutable variant also refuses to mutate lists and dicts.
- No file or network access: no loader, no imports, no includes; the only global is `range` (capped).
- Bounded (campaigns.content.bounds): source ≤ 100 KB, loops nest at most 3 deep, `range()` yields at most 1,000
  items, output ≤ 512 KB, and every render has a deadline (250 ms), a step budget (loop iterations and calls),
  a call depth (20) and a budget of characters it may build, all checked while it runs; operations that could build
  a big value from a small one are measured before they run. A render that breaks it raises TemplateTooCostly.
- Internal helpers (the click-tracking rewrite's names) have per-process random names: no template can name them.
- Email HTML autoescapes variables; SMS, WhatsApp and text bodies do not (they are not HTML).

Templates compile once (cached by source) and render many times: `compiled(source, html=…).render(context)`.
Several templates of one message (an email's subject, preheader, text and HTML) can be compiled into one
(`compiled_parts`), rendered in one pass and split: each part keeps its own scope and escaping.
"""

from __future__ import annotations

import re
import secrets
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from html import unescape
from typing import Any

from jinja2 import TemplateSyntaxError, Undefined, meta, nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing
from markupsafe import Markup, _escape_inner, escape  # _escape_inner: the C speedup when built

from campaigns.content import bounds
from campaigns.content.bounds import (
    LIST_ITEM_COST,
    MAX_DEPTH,
    MAX_INT_BITS,
    MAX_OUTPUT,
    RENDER_SECONDS,
    SHORT_OUTPUT,
    TemplateProblem,
    TemplateTooCostly,
    as_text,
    charge_result,
    escaped_length,
    percent_size,
)

MAX_SOURCE = 100_000
MAX_RANGE = 1_000
MAX_LOOP_DEPTH = 3
MAX_NESTING = 50  # levels of the parsed template: tags in tags, expressions in expressions

# Names only generated code uses: random per process, so neither a template nor a contact's data can spell them
# (`{{ cs_track }}` is an unknown variable like any other). The tracking rewrite (campaigns.content.links) writes
# them into the template; the email renderer passes their values.
_INTERNAL = secrets.token_hex(8)
TRACK_FILTER = f"cs_track_{_INTERNAL}"  # `{% filter … %}` around a templated href
TRACK_FUNCTION = f"cs_track_url_{_INTERNAL}"  # the message's URL → click URL function the filter calls
CLICK_PREFIX = f"cs_click_{_INTERNAL}"  # the message's click URL prefix, before a static link's signed part
# Wraps every loop's iterable (added to the parsed tree, never written in source: a name no lexer accepts).
_LOOP_FILTER = "cs-counted-loop"

__all__ = ["MAX_OUTPUT", "RENDER_SECONDS", "TemplateProblem", "TemplateTooCostly"]

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


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator with slices routed through the environment (`text[1:]` builds a new string, counted
    like any other), as the sandbox already routes item and attribute lookups, and every comparison ticking the
    render's clock (`needle in haystack` takes time in their length, with no call the sandbox would see)."""

    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        self.write("environment.compared(")
        super().visit_Compare(node, frame)
        self.write(")")

    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        if not isinstance(node.arg, nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        self.write("environment.sliced(")
        self.visit(node.node, frame)
        self.write(", slice(")
        for index, part in enumerate((node.arg.start, node.arg.stop, node.arg.step)):
            if index:
                self.write(", ")
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
        self.write("))")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, rendering within a budget (campaigns.content.bounds): every call, filter, operator,
    slice and loop iteration checks the deadline and counts against the render's steps and characters, calls
    nest at most MAX_DEPTH deep, and what could build a big value from a small one is measured before it runs."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator
    # Joins every buffer (macro bodies, `{% set %}` and `{% filter %}` blocks): counted, and refused before a join
    # that would not fit.
    concat = staticmethod(bounds.concat)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals = {"range": self._bounded_range}
        self.filters = {name: bounds.bounded_filter(name, function) for name, function in self.filters.items()}
        self.filters[_LOOP_FILTER] = bounds.counted_loop
        self.tests = {name: bounds.ticking(test) for name, test in self.tests.items()}

    compared = staticmethod(bounds.compared)

    @staticmethod
    def _bounded_range(*args: int) -> range:
        produced = range(*args)
        if len(produced) > MAX_RANGE:
            raise TemplateTooCostly(f"range() may produce at most {MAX_RANGE} items.")
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

    def sliced(self, obj: Any, part: slice) -> Any:
        budget = bounds.current()
        budget.tick()
        return charge_result(budget, obj[part])

    def wrap_str_format(self, value: Any) -> Any:
        # str.format / format_map, with every field's width bounded and its text counted as it is built.
        if (
            isinstance(value, (types.MethodType, types.BuiltinMethodType))
            and value.__name__ in ("format", "format_map")
            and isinstance(value.__self__, str)
        ):
            return bounds.bounded_format_method(self, value)
        return None

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = bounds.current()
        budget.step()
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, (str, int)):
            args = bounds.bounded_method_arguments(obj, args, kwargs)
        elif isinstance(obj, LoopContext) and args:
            # A recursive loop's next level: its items count like the first level's.
            level = obj._iterable
            weight, text = getattr(level, "weight", 1), getattr(level, "text", 0)
            args = (bounds.CountedLoop(args[0], weight, text), *args[1:])
        budget.depth += 1
        try:
            if budget.depth > MAX_DEPTH:
                raise TemplateTooCostly(f"Macros and loops call themselves at most {MAX_DEPTH} deep.")
            result = super().call(context, obj, *args, **kwargs)
        finally:
            budget.depth -= 1
        if type(obj) is Macro:
            return result  # counted when its body was joined
        return charge_result(budget, result)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = bounds.current()
        budget.tick()
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, (str, list, tuple)) and isinstance(times, int):
                    size = len(sequence) * times
                    if size > MAX_OUTPUT:
                        raise TemplateTooCostly(f"The rendered text is over {MAX_OUTPUT // 1000} KB.")
                    budget.afford(size if isinstance(sequence, str) else LIST_ITEM_COST * size)
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > MAX_INT_BITS
            ):
                raise TemplateTooCostly(_TOO_BIG_NUMBER)
        elif operator == "**" and isinstance(right, (int, float)):
            if abs(right) > 100:
                raise TemplateTooCostly("Exponents above 100 are not allowed in templates.")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > MAX_INT_BITS:
                raise TemplateTooCostly(_TOO_BIG_NUMBER)
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            size = len(left) + len(right)
            if isinstance(left, str):
                budget.afford(6 * size if hasattr(left, "__html__") or hasattr(right, "__html__") else size)
            else:
                budget.afford(LIST_ITEM_COST * size)
        elif operator == "%" and isinstance(left, str):
            size = percent_size(left, right)
            budget.afford(6 * size if hasattr(left, "__html__") else size)
        return charge_result(budget, self.binop_table[operator](left, right))


_TOO_BIG_NUMBER = f"Numbers in templates have at most {MAX_INT_BITS} bits (about {MAX_INT_BITS * 3 // 10:,} digits)."

# Without Jinja's optimizer: its constant folding takes time in the cube of an expression's depth, and what it
# would fold runs at render time under the budget anyway.
_HTML = BoundedEnvironment(autoescape=True, undefined=Undefined, optimized=False)
_TEXT = BoundedEnvironment(autoescape=False, undefined=Undefined, optimized=False)


_new_markup = str.__new__
_current = bounds._current


def _escape(value: Any) -> Markup:
    """Every autoescaped output: markupsafe.escape, counted, without its Markup constructor's Python frame for a
    plain string (the usual value: a 3 KB email escapes some 20). A value that is not text is measured before it
    is turned into text; a short output is not counted one by one (bounds.SHORT_OUTPUT)."""
    if type(value) is str:
        if len(value) > 65_536:
            _current.budget.afford(escaped_length(value))
        escaped = _new_markup(Markup, _escape_inner(value))
    elif hasattr(value, "__html__"):
        escaped = escape(value)
    else:
        escaped = _new_markup(Markup, _escape_inner(as_text(value)))
    if len(escaped) > SHORT_OUTPUT:
        _current.budget.charge(len(escaped))
    return escaped


def _text(value: Any) -> str:
    """Every output that is not escaped (generated code's `str(…)`): counted, and measured before a value that is
    not text is turned into text; a short output is not counted one by one (bounds.SHORT_OUTPUT)."""
    if type(value) is not str:
        value = as_text(value)
    if len(value) > SHORT_OUTPUT:
        _current.budget.charge(len(value))
    return value


@pass_context
def _track_filter(context: Any, value: str) -> Markup | str:
    """`{% filter <TRACK_FILTER> %}` around a templated href: the rendered URL, routed through tracking (escaped
    where the output is HTML, as is in a text part)."""
    track = context.resolve_or_missing(TRACK_FUNCTION)
    if context.eval_ctx.autoescape:
        if track is missing:  # rendered outside a tracked email render (a preview of the rewritten source)
            return _escape(value)
        return _escape(track(unescape(str(value))))
    return str(value) if track is missing else track(str(value).strip())


_HTML.filters[TRACK_FILTER] = _track_filter
_TEXT.filters[TRACK_FILTER] = _track_filter


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


def _count_loops(tree: nodes.Template) -> nodes.Template:
    """Every loop's iterable wrapped so each item it hands out counts against the render's steps, weighted by
    the outputs its body writes (so a buffer's list of pieces stays bounded too) and by the size of the body (a
    loop over a known number of items is counted before it starts, and its body may evaluate a long list literal
    without a call that would tick the clock: its size bounds the time per item), and against its characters by
    the text its body writes as is."""
    for loop in tree.find_all(nodes.For):
        if isinstance(loop.iter, nodes.Filter) and loop.iter.name == _LOOP_FILTER:
            continue
        writes = sum(len(output.nodes) for part in loop.body for output in part.find_all(nodes.Output))
        writes += sum(len(part.nodes) for part in loop.body if isinstance(part, nodes.Output))
        size = sum(1 + sum(1 for _ in part.find_all(nodes.Node)) for part in loop.body)
        text = sum(len(data.data) for part in loop.body for data in part.find_all(nodes.TemplateData))
        weighing = [nodes.Const(1 + writes + size // 4), nodes.Const(text), nodes.Const(loop.recursive)]
        loop.iter = nodes.Filter(loop.iter, _LOOP_FILTER, weighing, [], None, None, lineno=loop.lineno)
    return tree


def _parsed(environment: BoundedEnvironment, source: str) -> nodes.Template:
    try:
        tree = environment.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(
            exc.message or "Syntax error", line=exc.lineno, column=_column(source, exc.lineno, exc.message or "")
        ) from exc
    except (RecursionError, MemoryError) as exc:
        raise TemplateProblem("The template nests expressions too deeply.") from exc
    # Jinja's compiler recurses over the tree and takes time growing faster than its depth: measured first,
    # without recursion (a template or email reaches some 10 levels).
    pending = [(tree, 0)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_NESTING:
            raise TemplateProblem(f"Expressions and tags nest at most {MAX_NESTING} deep.", line=node.lineno, column=1)
        pending.extend((child, depth + 1) for child in node.iter_child_nodes())
    return tree


class _UndeclaredNames(meta.TrackingCodeGenerator):
    """jinja2.meta's introspection without its optimizer (which takes time in the cube of an expression's depth
    trying to fold constants at every level)."""

    def __init__(self, environment: Any) -> None:
        CodeGenerator.__init__(self, environment, "<introspection>", "<introspection>", optimized=False)
        self.undeclared_identifiers: set[str] = set()


def _undeclared_variables(tree: nodes.Template) -> set[str]:
    names = _UndeclaredNames(tree.environment)
    names.visit(tree)
    return names.undeclared_identifiers


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
        as is: bulk rendering builds it from a per-run prototype instead of having Jinja copy it twice per call.
        Whatever goes wrong (a broken budget, the sandbox, the data, Python itself) is a TemplateProblem."""
        if self.constant is not None:
            return self.constant
        template = self.template
        bounds.start_render()
        try:
            # One join of the whole output (much faster than generate()): every piece was counted against the
            # render's budget as it was made, so the list the join holds is bounded before the size check below.
            output = "".join(template.root_render_func(template.new_context(variables, shared=True)))
        except TemplateProblem:
            raise
        except SecurityError as exc:
            raise TemplateProblem(f"Not allowed in a template: {exc}") from exc
        except RecursionError as exc:
            raise TemplateTooCostly("The template nests values or calls too deeply.") from exc
        except MemoryError as exc:
            raise TemplateTooCostly("The template needs too much memory to render.") from exc
        except Exception as exc:  # any failure of a marketer's template fails its message, never its caller
            raise TemplateProblem(f"The template failed to render: {exc}") from exc
        finally:
            bounds.end_render()
        if len(output) > MAX_OUTPUT:
            raise TemplateTooCostly(f"The rendered text is over {MAX_OUTPUT // 1000} KB.")
        return output


def _from_tree(environment: BoundedEnvironment, tree: nodes.Template) -> Any:
    try:
        template = environment.from_string(_count_loops(tree))
    except TemplateSyntaxError as exc:
        raise TemplateProblem(exc.message or "Syntax error", line=exc.lineno, column=1) from exc
    except (RecursionError, MemoryError, SyntaxError) as exc:
        raise TemplateProblem("The template nests expressions too deeply.") from exc
    # Generated code writes every output through `escape(…)` (autoescaped) or `str(…)`, and `~` through
    # markup_join / str_join, all looked up in its own module namespace: the counted versions replace them there.
    namespace = template.root_render_func.__globals__
    namespace["escape"] = _escape
    namespace["str"] = _text
    namespace["markup_join"] = bounds.markup_join
    namespace["str_join"] = bounds.str_join
    return template


def compiled(source: str, *, html: bool) -> CompiledTemplate:
    """Parse and compile once; raises TemplateProblem (with line and column) for unusable templates. A template
    that cannot be compiled is remembered too: a send fails each of its messages without compiling it again (a
    100 KB template takes a second or more to parse)."""
    result = _compiled_or_problem(source, html)
    if isinstance(result, TemplateProblem):
        raise TemplateProblem(result.message, line=result.line, column=result.column)
    return result


@lru_cache(maxsize=2048)
def _compiled_or_problem(source: str, html: bool) -> CompiledTemplate | TemplateProblem:
    if len(source) > MAX_SOURCE:
        return TemplateProblem(f"A template is at most {MAX_SOURCE // 1000} KB.")
    try:
        return _compiled(source, html=html)
    except TemplateProblem as exc:  # kept without its traceback (which holds the parse's frames)
        return TemplateProblem(exc.message, line=exc.line, column=exc.column)
    except (RecursionError, MemoryError):  # the parser and compiler recurse over the template's nesting
        return TemplateProblem("The template nests expressions too deeply.")


compiled.cache_clear = _compiled_or_problem.cache_clear  # type: ignore[attr-defined]


def _compiled(source: str, *, html: bool) -> CompiledTemplate:
    environment = _HTML if html else _TEXT
    tree = _parsed(environment, source)
    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        raise TemplateProblem("Templates cannot include, import or extend other templates.", line=node.lineno, column=1)
    try:
        variables = _undeclared_variables(tree)
    except TemplateSyntaxError as exc:  # an unknown filter or test
        message = exc.message or "Syntax error"
        raise TemplateProblem(message, line=exc.lineno, column=_column(source, exc.lineno, message)) from exc
    if _loop_depth(tree) > MAX_LOOP_DEPTH:
        raise TemplateProblem(f"Loops nest at most {MAX_LOOP_DEPTH} deep.")
    plain = "{" not in source and "%}" not in source and "#}" not in source
    return CompiledTemplate(
        source=source,
        html=html,
        template=_from_tree(environment, tree),
        variables=variables,
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


# A stand-in message for checking a template's cost when it is saved: every standard field filled in, no custom
# attributes (they render empty), an event with no properties for triggered campaigns' templates.
SAMPLE_VARIABLES: dict[str, Any] = {
    "contact": {
        "external_id": "sample-contact",
        "email": "sample@example.com",
        "phone": "+447700900000",
        "first_name": "Sam",
        "last_name": "Sample",
        "timezone": "Europe/London",
        "locale": "en",
        "attributes": {},
        "created_at": "2026-01-01T00:00:00+00:00",
    },
    "campaign": {"name": "Sample campaign"},
    "organisation": {"name": "Sample organisation", "postal_address": "1 Sample Street"},
    "unsubscribe_url": "https://example.com/u/sample",
    "preferences_url": "https://example.com/p/sample",
    "message_id": "00000000-0000-0000-0000-000000000000",
    "event": {"id": "sample-event", "type": "", "properties": EventData(), "occurred_at": "2026-01-01T00:00:00+00:00"},
}


def render_cost_problem(source: str, *, html: bool) -> str | None:
    """Why the template cannot be saved, if it breaks the render budget for a sample message: refused at save
    with that reason instead of failing messages later. Other render failures depend on the data (an attribute
    no sample has) and are not a reason to refuse it."""
    template = compiled(source, html=html)
    try:
        template.render_variables({**render_globals(), **SAMPLE_VARIABLES})
    except TemplateTooCostly as exc:
        return str(exc)
    except TemplateProblem:
        return None
    return None
