"""What one render of a marketer's template may cost, whatever the template and its data: the budget and the
bounded operations campaigns.content.templates renders with.

A render gets a Budget (per thread): a CPU-time deadline, a number of steps (every loop iteration counts, weighted
by the outputs and the size of the loop's body, and every call), a call depth, and a number of characters it may
build in all (every output over 32 characters, every joined buffer, every filter and method result, every slice,
`*`, `+`, `~` and `%`; a list counts 16 per item). Anything that could build a big value from a small one is
measured *before* it runs (padding widths, format widths and precisions, `replace`, `join`, `indent`, `wordwrap`,
list and string repetition, integer size), so no single step allocates more than what is left of the budget. The
clock ticks on every step, call, filter, test, comparison and operator and is read every CLOCK_EVERY ticks; the few
library routines whose time grows faster than their input (textwrap, urlize's regular expressions, pprint) only
take bounded inputs.

Breaking the budget raises TemplateTooCostly, a TemplateProblem: the message it belongs to fails with that reason.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import wraps
from itertools import islice
from typing import Any

from jinja2.sandbox import SandboxedFormatter
from jinja2.utils import _PassArg
from markupsafe import EscapeFormatter, Markup
from markupsafe import escape as markupsafe_escape

MAX_OUTPUT = 512_000  # characters of one rendered text
MAX_PRODUCED = 6 * MAX_OUTPUT  # characters a render may build in all, intermediate values and buffers included
LIST_ITEM_COST = 16  # a list's pointer plus a share of what a new item costs, in characters of budget
MAX_STEPS = 50_000  # loop iterations (weighted by their body's outputs and size) and calls
# Outputs this short are not counted one by one (that would cost more than the rest of a typical render): their
# number is bounded by the steps (each output in a loop weighs a step per iteration) and by the source.
SHORT_OUTPUT = 32
MAX_DEPTH = 20  # macros, caller() and recursive loops calling themselves
MAX_WIDTH = 1_000  # padding widths, format widths and precisions, indent widths, batch and slice counts
MAX_INT_BITS = 4_096  # integers a template computes (`*`, `**`): about 1,200 digits
MAX_SLOW_INPUT = 10_000  # characters into wordwrap and urlize (their time grows faster than their input)
MAX_PPRINT = 50_000  # characters of value into pprint (pure Python, slow)
RENDER_SECONDS = 0.25  # of the rendering thread's CPU time
CLOCK_EVERY = 32  # ticks (steps, calls, filters, operators) between two readings of the clock


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


class TemplateTooCostly(TemplateProblem):
    """A render that broke its time, step, depth or size budget: the template is at fault, whatever the data."""


class Budget:
    """One render's allowance. The clock is the thread's CPU time (a render waiting for the CPU on a busy worker is
    not the template's fault), read every CLOCK_EVERY ticks because reading it costs about a microsecond: most
    renders never read it, and no more than CLOCK_EVERY bounded operations run between two readings."""

    __slots__ = ("depth", "left", "steps", "ticks", "until")

    def __init__(self) -> None:
        self.until = 0.0  # set at the first reading of the clock
        self.ticks = CLOCK_EVERY
        self.steps = MAX_STEPS
        self.left = MAX_PRODUCED
        self.depth = 0

    def charge(self, characters: int) -> None:
        self.left -= characters
        if self.left < 0:
            raise TemplateTooCostly(
                f"The template builds more than {MAX_PRODUCED // 1000:,} KB of text while rendering"
                f" (a message is at most {MAX_OUTPUT // 1000} KB)."
            )

    def afford(self, characters: int) -> None:
        """Refuse before building something of `characters` that would not fit (charged once it is built)."""
        if characters > self.left:
            self.charge(characters)

    def step(self, weight: int = 1) -> None:
        self.steps -= weight
        if self.steps < 0:
            raise TemplateTooCostly(
                f"The template takes too long to render: its loops and calls run more than {MAX_STEPS:,} steps."
            )
        self.ticks -= 1
        if self.ticks <= 0:
            self.clock()

    def tick(self) -> None:
        self.ticks -= 1
        if self.ticks <= 0:
            self.clock()

    def clock(self) -> None:
        self.ticks = CLOCK_EVERY
        now = time.thread_time()
        if not self.until:
            self.until = now + RENDER_SECONDS
        elif now > self.until:
            raise TemplateTooCostly("The template took too long to render.")


class _NoRender(Budget):
    """Outside a render (Jinja folding constants at compile time): every bounded operation refuses, so it runs at
    render time under the render's budget instead."""

    def charge(self, characters: int) -> None:
        raise TemplateTooCostly("evaluated when rendering")

    afford = charge

    def step(self, weight: int = 1) -> None:
        raise TemplateTooCostly("evaluated when rendering")

    def tick(self) -> None:
        raise TemplateTooCostly("evaluated when rendering")


_NO_RENDER = _NoRender()


class _Current(threading.local):
    budget: Budget = _NO_RENDER


_current = _Current()


def start_render() -> Budget:
    budget = _current.budget = Budget()
    return budget


def end_render() -> None:
    _current.budget = _NO_RENDER


def current() -> Budget:
    return _current.budget


# Sizes


def weight(value: Any, limit: int) -> int:
    """About how many characters `str(value)` makes, counted until it passes `limit` (no recursion: a deep value
    costs a loop, not the stack). A container's strings count as their repr, which escapes what is not printable."""
    if isinstance(value, str):
        return len(value)
    total = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item) + 4 if item.isprintable() else 10 * len(item) + 4
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 2 + 2 * len(item)
            pending.extend(item)
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        else:
            total += 32  # numbers, undefined values, loop and macro objects: short representations
        if total > limit:
            return total
    return total


_SHORT_TEXT = frozenset({int, float, bool, type(None)})  # str() of these is short (an int's digits are capped)


def as_text(value: Any) -> str:
    """str(value), refused before it is built when it would not fit in what is left of the budget."""
    kind = type(value)
    if kind is str:
        return value
    if kind not in _SHORT_TEXT and not isinstance(value, str):
        budget = _current.budget
        budget.afford(weight(value, budget.left))
    return str(value)


def escaped_length(text: str) -> int:
    return (
        len(text)
        + 4 * text.count("&")
        + 3 * (text.count("<") + text.count(">"))
        + 4 * (text.count('"') + text.count("'"))
    )


def _sized(value: Any, cost: int) -> None:
    """Refuse turning `value` into a list when that list would not fit."""
    budget = _current.budget
    try:
        count = len(value)
    except TypeError:
        return  # an iterator: bounded by what it iterates, each of which was counted when it was built
    budget.afford(count * cost)


def charge_result(budget: Budget, result: Any) -> Any:
    """Count a new value: text by its characters, containers by their items (`{}.fromkeys(items)` builds a dict)."""
    if isinstance(result, str):
        budget.charge(len(result))
    elif isinstance(result, (list, tuple)):
        budget.charge(LIST_ITEM_COST * len(result))
    elif isinstance(result, (dict, set, frozenset)):
        budget.charge(3 * LIST_ITEM_COST * len(result))
    return result


def _materialized(values: Any) -> list[Any]:
    budget = _current.budget
    items = list(islice(iter(values), budget.left // LIST_ITEM_COST + 1))
    budget.afford(LIST_ITEM_COST * len(items))
    return items


def _width(value: Any, what: str) -> None:
    if isinstance(value, str):
        value = len(value)
    if isinstance(value, int) and value > MAX_WIDTH:
        raise TemplateTooCostly(f"{what} is at most {MAX_WIDTH:,}.")


# Formatting: `%`, the format filter, str.format


_PERCENT = re.compile(r"%(?:\(([^)]*)\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.DOTALL)


def percent_size(template: str, arguments: Any) -> int:
    """About how long `template % arguments` is, refused when a width or precision is over MAX_WIDTH."""
    positional = arguments if isinstance(arguments, tuple) else (arguments,)
    index = 0
    limit = _current.budget.left
    total = len(template)

    def take() -> Any:
        nonlocal index
        value = positional[index] if index < len(positional) else ""
        index += 1
        return value

    for match in _PERCENT.finditer(template):
        key, width, precision, conversion = match.groups()
        if conversion == "%":
            continue
        sizes = []
        for part in (width, precision):
            if part == "*":
                part = take()
            if isinstance(part, str) and part.isdigit():
                part = int(part)
            if isinstance(part, int):
                _width(abs(part), "A format width or precision")
                sizes.append(abs(part))
        mapping = arguments if isinstance(arguments, Mapping) else {}
        value = take() if key is None else mapping.get(key, "")
        factor = 10 if conversion in "ra" else 1
        sizes.append(factor * weight(value, limit) + 32)
        total += max(sizes)
    return total


def _format_spec_widths(spec: str) -> None:
    for digits in re.findall(r"\d+", spec):
        if int(digits) > MAX_WIDTH:
            raise TemplateTooCostly(f"A format width or precision is at most {MAX_WIDTH:,}.")


class BoundedFormatter(SandboxedFormatter):
    """str.format in templates: every field's width and precision bounded, every field counted as it is built."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        budget = _current.budget
        _format_spec_widths(format_spec)
        if not isinstance(value, (str, int, float)):
            budget.afford(weight(value, budget.left))
        return charge_result(budget, super().format_field(value, format_spec))


class BoundedEscapeFormatter(BoundedFormatter, EscapeFormatter):
    pass


def bounded_format_method(environment: Any, method: Any) -> Callable[..., str]:
    """The sandbox's str.format / format_map wrapper, with the bounded formatter (the same behaviour otherwise)."""
    bound_self = method.__self__
    text_type = type(bound_self)
    formatter: BoundedFormatter
    if hasattr(bound_self, "__html__"):
        formatter = BoundedEscapeFormatter(environment, escape=bound_self.escape)
    else:
        formatter = BoundedFormatter(environment)
    is_format_map = method.__name__ == "format_map"

    @wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        if is_format_map:
            if kwargs or len(args) != 1:
                raise TypeError("format_map() takes exactly one argument")
            kwargs, args = args[0], ()
        return text_type(formatter.vformat(bound_self, args, kwargs))

    return wrapper


# Methods of str a template may call


REFUSED_METHODS = frozenset({"encode", "translate", "maketrans", "to_bytes"})


def bounded_method_arguments(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Check a call of a str method before it runs; returns the positional arguments to call it with."""
    name = method.__name__
    text = method.__self__
    budget = _current.budget
    if name in REFUSED_METHODS:
        raise TemplateTooCostly(f"{name}() cannot be used in templates.")
    if not isinstance(text, str):
        return args
    if name in ("center", "ljust", "rjust", "zfill"):
        _width(args[0] if args else 0, f"The width of {name}()")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        _width(size, "The tab size of expandtabs()")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        found = text.count(old) if old else len(text) + 1
        if isinstance(count, int) and count >= 0:
            found = min(found, count)
        budget.afford(len(text) + found * max(0, len(new) * (6 if hasattr(text, "__html__") else 1) - len(old)))
    elif name == "join" and args:
        items = _materialized(args[0])
        budget.afford(
            sum(len(item) if isinstance(item, str) else weight(item, budget.left) for item in items)
            + len(text) * max(0, len(items) - 1)
        )
        return (items, *args[1:])
    return args


# Filters


def _check_center(value: Any, width: Any = 80) -> None:
    _width(width, "The width of center")


def _check_indent(value: Any, width: Any = 4, first: bool = False, blank: bool = False) -> None:
    _width(width, "The width of indent")
    text = as_text(value)
    size = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    _current.budget.afford(len(text) + (text.count("\n") + 1) * max(size, 0))


def _check_wordwrap(
    value: Any,
    width: Any = 79,
    break_long_words: bool = True,
    wrapstring: Any = None,
    break_on_hyphens: bool = True,
) -> None:
    text = as_text(value)
    if len(text) > MAX_SLOW_INPUT:
        raise TemplateTooCostly(f"wordwrap takes at most {MAX_SLOW_INPUT:,} characters.")
    if isinstance(width, int) and width > 0:
        breaks = len(text) // width + text.count("\n") + 1
        _current.budget.afford(len(text) + breaks * len(as_text(wrapstring or "\n")))


_URLIZE_TAIL = (")", ">", ".", ",", "\n", "&gt;")
MAX_URLIZE_WORK = 250_000  # Σ len² of the words urlize searches for trailing punctuation (≈ 20 ms)


def _check_urlize(value: Any, *args: Any, **kwargs: Any) -> None:
    text = as_text(value)
    if len(text) > MAX_SLOW_INPUT:
        raise TemplateTooCostly(f"urlize takes at most {MAX_SLOW_INPUT:,} characters.")
    # Its trailing-punctuation search takes time in the square of a word's length, for words ending in one.
    words = str(markupsafe_escape(text)).split()
    if sum(len(word) ** 2 for word in words if word.endswith(_URLIZE_TAIL)) > MAX_URLIZE_WORK:
        raise TemplateTooCostly("urlize takes words of at most a few hundred characters.")


def _check_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _current.budget.afford(percent_size(as_text(value), kwargs or args))


def _check_replace(value: Any, old: Any, new: Any, count: Any = None) -> None:
    text, old, new = as_text(value), as_text(old), as_text(new)
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    _current.budget.afford(len(text) + found * max(0, len(new) - len(old)))


def _check_join(value: Any, d: Any = "", attribute: Any = None) -> tuple[Any, ...]:
    # Materialised and weighed first: a generator can hand out the same big value many times.
    budget = _current.budget
    items = _materialized(value)
    budget.afford(weight(items, budget.left) + len(as_text(d)) * len(items))
    return (items, d, attribute)


def _check_tojson(value: Any, indent: Any = None) -> None:
    if indent is not None:
        _width(indent, "tojson's indent")
    budget = _current.budget
    budget.afford(6 * weight(value, budget.left) * (1 + (indent if isinstance(indent, int) else 0)))


def _check_pprint(value: Any) -> None:
    if weight(value, MAX_PPRINT) > MAX_PPRINT:
        raise TemplateTooCostly(f"pprint takes values of at most {MAX_PPRINT:,} characters.")


def _check_list(value: Any) -> None:
    _sized(value, LIST_ITEM_COST)


def _check_batch(value: Any, linecount: Any, fill_with: Any = None) -> None:
    _width(linecount, "batch's count")


def _check_slice(value: Any, slices: Any, fill_with: Any = None) -> None:
    _width(slices, "slice's count")


def _check_sum(iterable: Any, attribute: Any = None, start: Any = 0) -> None:
    if not isinstance(start, (int, float)):
        raise TemplateTooCostly("sum adds numbers only.")


def _check_text_input(value: Any, *args: Any, **kwargs: Any) -> None:
    as_text(value)  # filters that turn their value into text: refused before a huge str() is built


def _check_escape(value: Any) -> None:
    text = as_text(value)
    if len(text) > 65_536:
        _current.budget.afford(escaped_length(text))


def _check_urlencode(value: Any) -> None:
    if isinstance(value, str) and len(value) > 65_536:
        _current.budget.afford(12 * len(value))
    elif not isinstance(value, str):
        budget = _current.budget
        budget.afford(12 * weight(value, budget.left))


FILTER_CHECKS: dict[str, Callable[..., tuple[Any, ...] | None]] = {
    "center": _check_center,
    "indent": _check_indent,
    "wordwrap": _check_wordwrap,
    "urlize": _check_urlize,
    "format": _check_format,
    "replace": _check_replace,
    "join": _check_join,
    "tojson": _check_tojson,
    "pprint": _check_pprint,
    "list": _check_list,
    "sort": _check_list,
    "unique": _check_list,
    "reverse": _check_list,
    "batch": _check_batch,
    "slice": _check_slice,
    "sum": _check_sum,
    "escape": _check_escape,
    "e": _check_escape,
    "forceescape": _check_escape,
    "urlencode": _check_urlencode,
    **{
        name: _check_text_input
        for name in ("string", "upper", "lower", "title", "capitalize", "trim", "truncate", "striptags")
    },
}


# Filters that return one of their arguments, a part of one, a number or a lazy sequence of existing items: nothing
# new to count, and their time is linear in a value that was counted when it was built.
UNCOUNTED_FILTERS = frozenset(
    {
        "abs",
        "attr",
        "count",
        "d",
        "default",
        "filesizeformat",
        "first",
        "float",
        "int",
        "items",
        "last",
        "length",
        "random",
        "reject",
        "rejectattr",
        "round",
        "select",
        "selectattr",
    }
)


def bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter checked before it runs (FILTER_CHECKS) and counted after, ticking the clock on each call."""
    if name in UNCOUNTED_FILTERS:
        return function
    check = FILTER_CHECKS.get(name)
    skip = 1 if _PassArg.from_obj(function) is not None else 0  # the context or eval context Jinja passes first

    if check is _check_text_input:
        # The usual case (title, upper, trim…), kept short: it runs for every message.
        @wraps(function)
        def bounded_text(*args: Any, **kwargs: Any) -> Any:
            if type(args[skip]) is not str:
                as_text(args[skip])
            result = function(*args, **kwargs)
            budget = _current.budget
            budget.ticks -= 1
            if budget.ticks <= 0:
                budget.clock()
            budget.left -= len(result) if isinstance(result, str) else 0
            if budget.left < 0:
                budget.charge(0)
            return result

        return bounded_text

    @wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _current.budget
        budget.ticks -= 1
        if budget.ticks <= 0:
            budget.clock()
        if check is not None:
            replaced = check(*args[skip:], **kwargs)
            if replaced is not None:  # the arguments as checked (an iterable materialised to be measured)
                args, kwargs = (*args[:skip], *replaced), {}
        result = function(*args, **kwargs)
        if isinstance(result, str):
            budget.charge(len(result))
        elif isinstance(result, (list, tuple)):
            budget.charge(LIST_ITEM_COST * len(result))
        return result

    return bounded


def ticking(function: Callable[..., Any]) -> Callable[..., Any]:
    """A test (`is in`, `is eq`…): its time grows with its operands, so it ticks the clock."""

    @wraps(function)
    def ticked(*args: Any, **kwargs: Any) -> Any:
        budget = _current.budget
        budget.ticks -= 1
        if budget.ticks <= 0:
            budget.clock()
        return function(*args, **kwargs)

    return ticked


def compared(result: Any) -> Any:
    """After every comparison (`in`, `==`, `<`… take time in their operands' length): a tick of the clock."""
    budget = _current.budget
    budget.ticks -= 1
    if budget.ticks <= 0:
        budget.clock()
    return result


# Loops


class CountedLoop:
    """A loop's iterable, charging `weight` steps and `text` characters for each item it hands out (the loop's
    length is kept)."""

    __slots__ = ("iterable", "text", "weight")

    def __init__(self, iterable: Iterable[Any], weight: int, text: int = 0) -> None:
        self.iterable = iterable
        self.weight = weight
        self.text = text

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]  # TypeError for iterators, as Jinja expects

    def __iter__(self) -> Iterator[Any]:
        budget = _current.budget
        weight, text = self.weight, self.text
        for item in self.iterable:
            budget.step(weight)
            if text:
                budget.charge(text)
            yield item


_SIZED = (list, tuple, range, str, dict)


def counted_loop(iterable: Iterable[Any], weight: int, text: int = 0, recursive: bool = False) -> Iterable[Any]:
    """A loop's iterable, its items counted: all at once when their number is known (the loop then runs on the
    iterable itself, at no cost per item), one by one otherwise (and for recursive loops, whose next levels
    carry the weight along: BoundedEnvironment.call). `weight`: the outputs its body writes, `text`: the
    characters of its body's own text, per item."""
    budget = _current.budget
    if not recursive and type(iterable) in _SIZED:
        count = len(iterable)  # type: ignore[arg-type]
        budget.step(count * weight)
        if text:
            budget.charge(count * text)
        return iterable
    budget.tick()
    return CountedLoop(iterable, weight, text)


# Joins in generated code


def concat(parts: Iterable[str]) -> str:
    """A buffer's join (macro bodies, `{% set %}` and `{% filter %}` blocks), refused before it is built when it
    would not fit: a buffer can hold the same big value many times over."""
    if type(parts) is not list:
        parts = list(parts)
    _current.budget.charge(sum(map(len, parts)))
    return "".join(parts)


def str_join(values: Iterable[Any]) -> str:
    """`a ~ b` in text: each operand turned into text within the budget, the result counted."""
    return concat([as_text(value) for value in values])


def markup_join(values: Iterable[Any]) -> str:
    """`a ~ b` in HTML: as Jinja's markup_join (escaped when an operand is markup), counted."""
    parts = [value if hasattr(value, "__html__") else as_text(value) for value in values]
    if any(hasattr(part, "__html__") for part in parts):
        budget = _current.budget
        for part in parts:
            if not hasattr(part, "__html__") and len(part) > 65_536:
                budget.afford(escaped_length(part))
        return Markup(concat([markupsafe_escape(part) for part in parts]))  # noqa: S704 - every part escaped or markup
    return concat(parts)
