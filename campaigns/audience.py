"""A campaign's audience: its definition as one rule tree, and the set operations the engine needs.

include segments (AND/OR) ∧ inline rules ∧ ¬(any excluded segment), then a deterministic holdout share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from django.core.exceptions import ValidationError

from audiences import segments as engine
from audiences.models import Organisation, Segment, SegmentKind
from audiences.rules import Compiled, RuleError
from audiences.services import segment_refresh_external
from campaigns.models import AudienceCombine, Campaign, SegmentRole


def audience_tree(
    *, include: Sequence[UUID], combine: str, exclude: Sequence[UUID], rules: Any
) -> dict[str, Any] | None:
    parts: list[Any] = []
    if include:
        parts.append({combine: [{"segment": str(segment_id)} for segment_id in include]})
    if rules:
        parts.append(rules)
    if not parts:
        return None
    if exclude:
        parts.append({"not": {"or": [{"segment": str(segment_id)} for segment_id in exclude]}})
    return parts[0] if len(parts) == 1 else {"and": parts}


def campaign_audience_spec(campaign: Campaign) -> dict[str, Any]:
    links = list(campaign.segment_links.all())
    return {
        "include": [link.segment_id for link in links if link.role == SegmentRole.INCLUDE],
        "exclude": [link.segment_id for link in links if link.role == SegmentRole.EXCLUDE],
        "combine": campaign.audience_combine,
        "rules": campaign.audience_rules,
        "holdout_percent": campaign.holdout_percent,
    }


def validate_audience(organisation: Organisation, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check an audience definition; returns it cleaned. Field errors name the part that is wrong."""
    errors: dict[str, Any] = {}
    include = list(dict.fromkeys(spec.get("include") or []))
    exclude = list(dict.fromkeys(spec.get("exclude") or []))
    combine = spec.get("combine") or AudienceCombine.OR
    if combine not in AudienceCombine.values:
        errors["audience.combine"] = ["Either and or or."]
    known = set(
        Segment.objects.filter(organisation=organisation, pk__in=[*include, *exclude]).values_list("pk", flat=True)
    )
    for key, ids in (("include", include), ("exclude", exclude)):
        missing = [str(x) for x in ids if x not in known]
        if missing:
            errors[f"audience.{key}"] = [f"No such segment: {', '.join(missing)}."]
    both = set(include) & set(exclude)
    if both:
        errors["audience.exclude"] = ["A segment cannot be both included and excluded."]
    holdout = spec.get("holdout_percent", 0) or 0
    if not 0 <= float(holdout) <= 20:
        errors["audience.holdout_percent"] = ["Between 0 and 20 percent."]
    rules = spec.get("rules")
    if rules is not None and not errors:
        try:
            engine.compile_rules(organisation, rules)
        except RuleError as exc:
            errors["audience.rules"] = exc.as_messages()
    if errors:
        raise ValidationError(errors)
    return {"include": include, "exclude": exclude, "combine": combine, "rules": rules, "holdout_percent": holdout}


def spec_condition(
    organisation: Organisation, spec: Mapping[str, Any], *, refresh_external: bool = True
) -> Compiled | None:
    """An audience definition as one SQL condition (None: nothing defined). External segments are re-resolved
    first when their members are stale, so the audience reflects the moment it is used."""
    tree = audience_tree(include=spec["include"], combine=spec["combine"], exclude=spec["exclude"], rules=spec["rules"])
    if tree is None:
        return None
    if refresh_external:
        external = Segment.objects.filter(
            organisation=organisation, pk__in=[*spec["include"], *spec["exclude"]], kind=SegmentKind.EXTERNAL
        )
        for segment in external:
            segment_refresh_external(segment=segment)
    return engine.compile_rules(organisation, tree)


def audience_condition(campaign: Campaign, *, refresh_external: bool = True) -> Compiled | None:
    return spec_condition(campaign.organisation, campaign_audience_spec(campaign), refresh_external=refresh_external)


def holdout_seed(campaign: Campaign) -> str:
    return str(campaign.pk)


def spec_estimate(organisation: Organisation, spec: Mapping[str, Any], *, exact: bool = False) -> dict[str, Any]:
    """Audience size for a (validated) definition, with the expected holdout split."""
    condition = spec_condition(organisation, spec)
    if condition is None:
        return {
            "count": 0,
            "exact": True,
            "low": 0,
            "high": 0,
            "method": "no audience defined",
            "holdout": 0,
            "recipients": 0,
            "milliseconds": 0.0,
        }
    result = engine.estimate(organisation, condition, exact=exact).as_dict()
    holdout = round(result["count"] * float(spec.get("holdout_percent") or 0) / 100)
    return result | {"holdout": holdout, "recipients": result["count"] - holdout}


def audience_estimate(campaign: Campaign, *, exact: bool = False) -> dict[str, Any]:
    return spec_estimate(campaign.organisation, campaign_audience_spec(campaign), exact=exact)


def audience_is_member(campaign: Campaign, contact_id: int) -> bool:
    """Is the contact in the campaign's audience right now (holdout members included)? Single-digit ms."""
    condition = audience_condition(campaign)
    return condition is not None and engine.is_member(campaign.organisation, condition, contact_id)


def audience_in_holdout(campaign: Campaign, contact_id: int) -> bool:
    return engine.in_holdout(holdout_seed(campaign), contact_id, float(campaign.holdout_percent))


def audience_resolution_select(campaign: Campaign) -> Compiled:
    """`SELECT contact_id, is_holdout …` over the whole audience, for a run's INSERT … SELECT fan-out."""
    condition = audience_condition(campaign)
    if condition is None:
        raise ValidationError({"audience": ["The campaign has no audience."]})
    return engine.resolution_select(
        campaign.organisation, condition, holdout_percent=float(campaign.holdout_percent), seed=holdout_seed(campaign)
    )
