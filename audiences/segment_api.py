"""API for contacts and segments (/api/v1/contacts/, /api/v1/segments/)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from audiences import segments as engine
from audiences import services
from audiences.adapters import AdapterError, contact_profile
from audiences.models import Contact, ContactAttribute, Segment, SegmentKind
from audiences.pii import contact_search, pii_hash
from audiences.rules import RuleError

MAX_PREVIEW = 100


class ContactSerializer(serializers.ModelSerializer):
    class Meta:
        model = Contact
        fields = [
            "id",
            "external_id",
            "email",
            "phone",
            "first_name",
            "last_name",
            "timezone",
            "locale",
            "attributes",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class ContactWriteSerializer(serializers.Serializer):
    """Shape only; values are validated by audiences.contacts.validate_contact (E.164 phones, IANA zones…)."""

    external_id = serializers.CharField(max_length=255, required=False)
    email = serializers.CharField(required=False, allow_blank=True, allow_null=True)
    phone = serializers.CharField(required=False, allow_blank=True, allow_null=True)
    first_name = serializers.CharField(required=False, allow_blank=True, allow_null=True)
    last_name = serializers.CharField(required=False, allow_blank=True, allow_null=True)
    timezone = serializers.CharField(required=False, allow_blank=True, allow_null=True)
    locale = serializers.CharField(required=False, allow_blank=True, allow_null=True)
    attributes = serializers.DictField(required=False)


class BulkContactsSerializer(serializers.Serializer):
    contacts = serializers.ListField(child=serializers.JSONField(), max_length=10_000, min_length=1)


class AttributeSerializer(serializers.ModelSerializer):
    class Meta:
        model = ContactAttribute
        fields = ["name", "type", "examples", "first_seen_at", "last_seen_at"]


class ContactViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """Contacts of the caller's organisation. `?external_id=`, `?email=`, `?phone=` or `?search=` (a prefix of
    the external id, or a whole email or phone number)."""

    serializer_class = ContactSerializer
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[Contact]:
        if getattr(self, "swagger_fake_view", False):
            return Contact.objects.none()
        queryset = Contact.objects.filter(organisation=self.request.actor.organisation).order_by("-id")
        params = self.request.query_params
        if params.get("external_id"):
            queryset = queryset.filter(external_id=params["external_id"])
        # Emails and phones are encrypted at rest: they are found by keyed hash, so whole values only.
        if params.get("email"):
            queryset = queryset.filter(email_hash=pii_hash(params["email"]))
        if params.get("phone"):
            queryset = queryset.filter(phone_hash=pii_hash(params["phone"]))
        if params.get("search"):
            queryset = queryset.filter(contact_search(params["search"]))
        return queryset

    @extend_schema(
        parameters=[
            OpenApiParameter("external_id", str),
            OpenApiParameter("email", str, description="Whole email address (stored encrypted; no prefixes)."),
            OpenApiParameter("phone", str, description="Whole E.164 number."),
            OpenApiParameter("search", str),
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=ContactWriteSerializer, responses={201: ContactSerializer})
    def create(self, request: Request) -> Response:
        ContactWriteSerializer(data=request.data).is_valid(raise_exception=True)
        contact = services.contact_create(actor=request.actor, data=dict(request.data))
        return Response(ContactSerializer(contact).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ContactWriteSerializer, responses=ContactSerializer)
    def partial_update(self, request: Request, pk: str) -> Response:
        ContactWriteSerializer(data=request.data, partial=True).is_valid(raise_exception=True)
        contact = services.contact_update(actor=request.actor, contact=self.get_object(), data=dict(request.data))
        return Response(ContactSerializer(contact).data)

    def perform_destroy(self, instance: Contact) -> None:
        services.contact_delete(actor=self.request.actor, contact=instance)

    @extend_schema(
        request=BulkContactsSerializer,
        responses=inline_serializer(
            "BulkContactsResult",
            {
                "created": serializers.IntegerField(),
                "updated": serializers.IntegerField(),
                "rejected": serializers.ListField(child=serializers.DictField()),
            },
        ),
    )
    @action(detail=False, methods=["post"])
    def bulk(self, request: Request) -> Response:
        """Create or update up to 10,000 contacts by external_id in one set-based statement. Attributes merge
        (null removes one). Invalid rows are skipped and reported by index with field errors; the rest are saved."""
        payload = BulkContactsSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        result = services.contacts_upsert(actor=request.actor, rows=payload.validated_data["contacts"])
        return Response({"created": result.created, "updated": result.updated, "rejected": result.rejected})

    @extend_schema(responses=AttributeSerializer(many=True))
    @action(detail=False, methods=["get"])
    def attributes(self, request: Request) -> Response:
        """The attribute catalogue: every attribute seen, its inferred type and example values."""
        rows = ContactAttribute.objects.filter(organisation=request.actor.organisation)
        return Response(AttributeSerializer(rows, many=True).data)

    @extend_schema(responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["get"])
    def profile(self, request: Request, pk: str) -> Response:
        """The profile templates see (user_360 view)."""
        return Response(contact_profile(self.get_object()))


# --- segments -------------------------------------------------------------------------------------------------


class SegmentSerializer(serializers.ModelSerializer):
    member_count = serializers.SerializerMethodField()

    class Meta:
        model = Segment
        fields = [
            "id",
            "name",
            "description",
            "kind",
            "rules",
            "external_query",
            "external_segment_id",
            "members_refreshed_at",
            "member_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_member_count(self, segment: Segment) -> int | None:
        # Lists of uploaded ids have a cheap exact size; rule segments are sized with the estimate action.
        return getattr(segment, "member_total", None) if segment.kind != SegmentKind.RULES else None


class SegmentWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(max_length=2000, allow_blank=True, required=False)
    kind = serializers.ChoiceField(choices=SegmentKind.choices, required=False, default=SegmentKind.RULES)
    rules = serializers.JSONField(required=False, allow_null=True)
    external_query = serializers.CharField(max_length=20_000, allow_blank=True, required=False)


class PrebuiltPickSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=200, help_text="The id of one of the audience service's segments.")


def audience_service_unavailable(exc: AdapterError, segment: Segment | None = None) -> Response:
    """503 with the reason; for a segment, what it keeps meanwhile (its last members, and when they were read)."""
    body: dict[str, Any] = {"detail": f"The audience service is unavailable: {exc}", "code": "service_unavailable"}
    if segment is not None:
        body["member_count"] = segment.members.count()
        body["members_refreshed_at"] = segment.members_refreshed_at
    return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "30"})


class MembersSerializer(serializers.Serializer):
    external_ids = serializers.ListField(child=serializers.CharField(max_length=255), max_length=1_000_000)
    mode = serializers.ChoiceField(choices=["replace", "add", "remove"], default="replace")


class RulesSerializer(serializers.Serializer):
    rules = serializers.JSONField()


def _estimate_response(request: Request, condition: Any) -> Response:
    exact = request.query_params.get("exact", "").lower() in ("1", "true", "yes")
    return Response(engine.estimate(request.actor.organisation, condition, exact=exact).as_dict())


def _rules_or_400(request: Request, tree: Any) -> Any:
    try:
        return engine.compile_rules(request.actor.organisation, tree)
    except RuleError as exc:
        raise serializers.ValidationError({"rules": exc.as_messages()}) from exc


class SegmentViewSet(viewsets.ModelViewSet):
    serializer_class = SegmentSerializer
    lookup_value_regex = r"[0-9a-fA-F-]{36}"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    read_actions = ("estimate_rules",)  # sizes rules posted in the body and saves nothing: analysts estimate too

    def get_queryset(self) -> QuerySet[Segment]:
        if getattr(self, "swagger_fake_view", False):
            return Segment.objects.none()
        from django.db.models import Count

        return (
            Segment.objects.filter(organisation=self.request.actor.organisation)
            .annotate(member_total=Count("members"))
            .order_by("name", "id")
        )

    @extend_schema(request=SegmentWriteSerializer, responses={201: SegmentSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = SegmentWriteSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        segment = services.segment_create(actor=request.actor, data=dict(payload.validated_data))
        return Response(SegmentSerializer(self.get_queryset().get(pk=segment.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=SegmentWriteSerializer, responses=SegmentSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = SegmentWriteSerializer(data=request.data, partial=True)
        payload.is_valid(raise_exception=True)
        data = {key: value for key, value in payload.validated_data.items() if key in request.data}
        segment = services.segment_update(actor=request.actor, segment=self.get_object(), data=data)
        return Response(SegmentSerializer(self.get_queryset().get(pk=segment.pk)).data)

    def perform_destroy(self, instance: Segment) -> None:
        services.segment_delete(actor=self.request.actor, segment=instance)

    @extend_schema(parameters=[OpenApiParameter("exact", bool)], responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["get"])
    def estimate(self, request: Request, pk: str) -> Response:
        """Size: a 1 % sample estimate with its interval on large organisations, exact with ?exact=true."""
        segment = self.get_object()
        services.segment_refresh_external(segment=segment)
        return _estimate_response(request, engine.segment_condition(segment))

    @extend_schema(
        parameters=[OpenApiParameter("limit", int, description=f"1-{MAX_PREVIEW}, default 20")],
        responses=ContactSerializer(many=True),
    )
    @action(detail=True, methods=["get"])
    def preview(self, request: Request, pk: str) -> Response:
        """The first contacts of the segment (newest first)."""
        segment = self.get_object()
        try:
            limit = min(max(int(request.query_params.get("limit", 20)), 1), MAX_PREVIEW)
        except ValueError as exc:
            raise serializers.ValidationError({"limit": [f"A whole number from 1 to {MAX_PREVIEW}."]}) from exc
        services.segment_refresh_external(segment=segment)
        contacts = engine.matching_contacts(request.actor.organisation, engine.segment_condition(segment))
        return Response(ContactSerializer(contacts.order_by("-id")[:limit], many=True).data)

    @extend_schema(request=MembersSerializer, responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["post"])
    def members(self, request: Request, pk: str) -> Response:
        """Upload the external ids of a static segment (replace, add or remove). Unknown ids are listed."""
        segment = self.get_object()  # another organisation's segment is a 404 before anything else
        payload = MembersSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        result = services.segment_set_members(
            actor=request.actor,
            segment=segment,
            external_ids=payload.validated_data["external_ids"],
            mode=payload.validated_data["mode"],
        )
        return Response(
            {
                "added": result.added,
                "removed": result.removed,
                "total": result.total,
                "unknown_external_ids": result.unknown_external_ids,
            }
        )

    @extend_schema(request=None, responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["post"])
    def refresh(self, request: Request, pk: str) -> Response:
        """Re-resolve an external segment through isA_Data now. The service failing is a 503 with the reason, and
        the segment keeps its last members."""
        services.require_contact_write(request.actor)
        segment = self.get_object()
        try:
            count = services.segment_refresh_external(segment=segment, force=True)
        except AdapterError as exc:
            return audience_service_unavailable(exc, segment)
        return Response({"member_count": count})

    @extend_schema(
        methods=["GET"],
        responses=inline_serializer(
            "PrebuiltSegments",
            {
                "results": inline_serializer(
                    "PrebuiltSegment",
                    {
                        "id": serializers.CharField(),
                        "name": serializers.CharField(),
                        "size": serializers.IntegerField(allow_null=True),
                        "updated_at": serializers.CharField(allow_null=True),
                        "segment": serializers.UUIDField(allow_null=True),
                    },
                    many=True,
                )
            },
        ),
    )
    @extend_schema(methods=["POST"], request=PrebuiltPickSerializer, responses={201: SegmentSerializer})
    @action(detail=False, methods=["get", "post"], url_path="prebuilt")
    def prebuilt(self, request: Request) -> Response:
        """The audience service's pre-built segments (name, size, updated; `segment`: ours that references it). POST
        {"id"} picks one: a segment of ours that references it (201; 200 when it was picked before), for campaigns
        to include, resolved through the service whenever it is used."""
        try:
            if request.method == "GET":
                return Response({"results": services.prebuilt_segments(request.actor.organisation)})
            payload = PrebuiltPickSerializer(data=request.data)
            payload.is_valid(raise_exception=True)
            segment, created = services.segment_add_prebuilt(
                actor=request.actor, external_segment_id=payload.validated_data["id"]
            )
        except AdapterError as exc:
            return audience_service_unavailable(exc)
        return Response(
            SegmentSerializer(self.get_queryset().get(pk=segment.pk)).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(request=RulesSerializer, parameters=[OpenApiParameter("exact", bool)], responses=OpenApiTypes.OBJECT)
    @action(detail=False, methods=["post"], url_path="estimate")
    def estimate_rules(self, request: Request) -> Response:
        """Size of an unsaved rule tree (what the console's builder calls as rules change). Invalid rules are a 400
        pointing at the offending node."""
        payload = RulesSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return _estimate_response(request, _rules_or_400(request, payload.validated_data["rules"]))
