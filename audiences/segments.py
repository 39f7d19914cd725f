"""The segment engine: compile rule trees and segments to SQL, then count, estimate, preview, resolve, test one contact.

Everything here reads; segment writes are in audiences.services.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import BooleanField, QuerySet
from django.db.models.expressions import RawSQL

from audiences.models import Contact, ContactAttribute, Organisation, Segment, SegmentKind
from audiences.rules import Compiled, RuleCompiler, RuleError, RuleProblem

# Below this many contacts in the 1 % sample (about 200k contacts), an exact count is both fast and better.
SAMPLE_MIN_ROWS = 2_000
SAMPLE_MODULUS = 100
HOLDOUT_BUCKETS = 10_000


def attribute_types(organisation: Organisation) -> dict[str, str]:
    return dict(ContactAttribute.objects.filter(organisation=organisation).values_list("name", "type"))


def _external_query_provider() -> Any:
    from audiences.adapters import segment_query_provider

    return segment_query_provider()


def compiler_for(organisation: Organisation) -> RuleCompiler:
    """A compiler that knows the organisation's attributes and resolves {"segment": id} to that segment's SQL."""
    types = attribute_types(organisation)
    segments: dict[UUID, Segment] = {}

    def compile_segment(segment_id: UUID, path: str, seen: frozenset[UUID]) -> Compiled:
        segment = segments.get(segment_id)
        if segment is None:
            segment = Segment.objects.filter(organisation=organisation, pk=segment_id).first()
            if segment is None:
                raise RuleError([RuleProblem(path, "No such segment in this organisation.")])
            segments[segment_id] = segment
        return segment_condition(segment, types=types, compile_segment=compile_segment, path=path, seen=seen)

    return RuleCompiler(attribute_types=types, compile_segment=compile_segment)


def compile_rules(organisation: Organisation, tree: Any) -> Compiled:
    """Validate and compile a rule tree for `organisation`. Raises RuleError pointing at bad nodes."""
    return compiler_for(organisation).compile(tree)


def members_condition(segment_id: UUID) -> Compiled:
    return Compiled(
        "EXISTS (SELECT 1 FROM audiences_segmentmember AS sm"
        ' WHERE sm.segment_id = %s AND sm.contact_id = "audiences_contact".id)',
        [segment_id],
    )


def segment_condition(
    segment: Segment,
    *,
    types: dict[str, str] | None = None,
    compile_segment: Callable[[UUID, str, frozenset[UUID]], Compiled] | None = None,
    path: str = "",
    seen: frozenset[UUID] = frozenset(),
) -> Compiled:
    """The SQL condition for membership of `segment`."""
    seen = seen | {segment.pk}
    if segment.kind == SegmentKind.STATIC:
        return members_condition(segment.pk)
    if segment.kind == SegmentKind.EXTERNAL:
        provider = _external_query_provider()
        if not provider.embedded or segment.external_segment_id:
            # Resolved by the external service into members (segment_refresh_external), then read like a list (a
            # pre-built segment's last members, too, if the service has been switched to the embedded engine).
            return members_condition(segment.pk)
        tree = parse_external_query(segment.external_query, path=path)
    else:
        tree = segment.rules
    if compile_segment is None:
        compiler = compiler_for(segment.organisation)
    else:
        compiler = RuleCompiler(attribute_types=types or {}, compile_segment=compile_segment)
    try:
        return compiler.compile(tree, path=path, seen=seen)
    except RuleError as exc:
        if path:  # inside another tree: say which segment is broken
            problems = [RuleProblem(p.path, f"In segment {segment.name!r}: {p.message}") for p in exc.problems]
            raise RuleError(problems) from exc
        raise


def parse_external_query(query: str, *, path: str = "") -> Any:
    """With the embedded intelligent_query adapter, an external segment's query is a rule tree in JSON."""
    try:
        return json.loads(query)
    except (TypeError, ValueError) as exc:
        raise RuleError([RuleProblem(path, "The embedded query engine expects a JSON rule tree.")]) from exc


def matching_contacts(organisation: Organisation, condition: Compiled) -> QuerySet[Contact]:
    return Contact.objects.filter(organisation=organisation).filter(
        # The SQL is compiled from a validated rule tree; every value in it is a bound parameter.
        RawSQL(condition.sql, condition.params, output_field=BooleanField())  # noqa: S611
    )


def count_exact(organisation: Organisation, condition: Compiled) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM audiences_contact"
            f' WHERE "audiences_contact".organisation_id = %s AND {condition.sql}',
            [organisation.pk, *condition.params],
        )
        return cursor.fetchone()[0]


@dataclass(frozen=True)
class Estimate:
    count: int
    exact: bool
    low: int
    high: int
    method: str
    milliseconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "exact": self.exact,
            "low": self.low,
            "high": self.high,
            "method": self.method,
            "milliseconds": round(self.milliseconds, 1),
        }


def estimate(organisation: Organisation, condition: Compiled, *, exact: bool = False) -> Estimate:
    """Audience size. Large organisations get a fast estimate from a fixed 1 % sample of contacts (those whose id
    hashes to 0 mod 100), with a 95 % Wilson interval; small ones, or `exact=True`, get an exact count."""
    started = time.perf_counter()
    if not exact:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*), count(*) FILTER (WHERE " + condition.sql + ") FROM audiences_contact"
                ' WHERE "audiences_contact".organisation_id = %s AND MOD(hashint8("audiences_contact".id), 100) = 0',
                [*condition.params, organisation.pk],
            )
            sampled, matched = cursor.fetchone()
        if sampled >= SAMPLE_MIN_ROWS:
            low, high = wilson_interval(matched, sampled)
            return Estimate(
                count=matched * SAMPLE_MODULUS,
                exact=False,
                low=math.floor(low * sampled * SAMPLE_MODULUS),
                high=math.ceil(high * sampled * SAMPLE_MODULUS),
                method=f"1% fixed sample ({sampled:,} contacts), 95% Wilson interval",
                milliseconds=(time.perf_counter() - started) * 1000,
            )
    total = count_exact(organisation, condition)
    return Estimate(total, True, total, total, "exact count", (time.perf_counter() - started) * 1000)


def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    if trials == 0:
        return 0.0, 0.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def is_member(organisation: Organisation, condition: Compiled, contact_id: int) -> bool:
    """Does one contact satisfy the condition? A primary-key lookup: single-digit milliseconds."""
    with connection.cursor() as cursor:
        cursor.execute(
            f'SELECT EXISTS (SELECT 1 FROM audiences_contact WHERE "audiences_contact".id = %s'
            f' AND "audiences_contact".organisation_id = %s AND {condition.sql})',
            [contact_id, organisation.pk, *condition.params],
        )
        return bool(cursor.fetchone()[0])


# --- holdout ----------------------------------------------------------------------------------------------------
#
# A contact is in a campaign's holdout when bucket(seed, contact id) < holdout percent x 100, where
#     bucket = first 32 bits of md5("<seed>:<contact id>") as an unsigned integer, modulo 10,000.
# The same formula runs in SQL (set-based resolution) and Python (one contact), so both always agree, and it
# depends on nothing but the seed and the id: stable across runs, processes and database restarts.


def holdout_bucket(seed: str, contact_id: int) -> int:
    import hashlib

    return int(hashlib.md5(f"{seed}:{contact_id}".encode()).hexdigest()[:8], 16) % HOLDOUT_BUCKETS  # noqa: S324


def in_holdout(seed: str, contact_id: int, holdout_percent: float) -> bool:
    return holdout_bucket(seed, contact_id) < round(holdout_percent * 100)


def holdout_bucket_sql(contact_id_sql: str, seed_sql: str = "%s") -> str:
    """holdout_bucket in SQL, for a contact id column and the seed's placeholder (statements with parameters go
    through the driver, hence the doubled percent sign)."""
    return f"('x' || substr(md5({seed_sql} || ':' || {contact_id_sql}::text), 1, 8))::bit(32)::bigint %% 10000"


# --- the global control group -------------------------------------------------------------------------------------
#
# An organisation's global control group is a holdout across all its marketing: the same bucket, seeded with
# "global-control:<organisation id>", below global_control_percent x 100. The seed never changes, so raising the
# percentage adds only the contacts of the new margin and lowering it keeps a subset of the group.


def global_control_seed(organisation_id: Any) -> str:
    return f"global-control:{organisation_id}"


def global_control_threshold(organisation: Organisation) -> int:
    return round(float(organisation.global_control_percent) * 100)


def in_global_control(organisation: Organisation, contact_id: int) -> bool:
    return in_holdout(global_control_seed(organisation.pk), contact_id, float(organisation.global_control_percent))


def global_control_condition(organisation: Organisation, contact_id_sql: str) -> Compiled | None:
    """SQL true for the contacts (`contact_id_sql`, a column) in the organisation's global control group; None when
    the group is off, so a statement without one pays nothing for it."""
    threshold = global_control_threshold(organisation)
    if not threshold:
        return None
    return Compiled(
        f"({holdout_bucket_sql(contact_id_sql)} < %s)",
        [global_control_seed(organisation.pk), threshold],
    )


def resolution_select(
    organisation: Organisation, condition: Compiled, *, holdout_percent: float = 0, seed: str = ""
) -> Compiled:
    """`SELECT contact_id, is_holdout, variant_bucket, has_email, has_phone` for the whole audience: one statement,
    to feed INSERT … SELECT. One MD5 per contact gives both draws: bits 1-32 the holdout, bits 33-64 the variant
    bucket (campaigns.content.assignment). The address flags save fan-out a second pass over the contacts."""
    threshold = round(holdout_percent * 100)
    return Compiled(
        'SELECT "audiences_contact".id AS contact_id, (b.holdout_bucket < %s) AS is_holdout,'
        " b.variant_bucket, \"audiences_contact\".email <> '' AS has_email,"
        " \"audiences_contact\".phone <> '' AS has_phone FROM audiences_contact"
        " CROSS JOIN LATERAL (SELECT md5(%s || ':' || \"audiences_contact\".id::text) AS digest) m"
        " CROSS JOIN LATERAL (SELECT"
        " ('x' || substr(m.digest, 1, 8))::bit(32)::bigint %% 10000 AS holdout_bucket,"
        " ('x' || substr(m.digest, 9, 8))::bit(32)::bigint %% 10000 AS variant_bucket) b"
        f' WHERE "audiences_contact".organisation_id = %s AND {condition.sql}',
        [threshold, seed, organisation.pk, *condition.params],
    )
