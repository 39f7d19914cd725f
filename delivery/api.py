from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audiences.access import INBOX_CLIENTS, PROVIDER_POSTERS
from delivery import inbox, receipts
from delivery.estimates import RunEstimate, run_estimate
from delivery.failures import run_failure_reasons
from delivery.models import InboxMessage, Run
from delivery.selectors import run_list, run_progress


class RunProgressSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    queued = serializers.IntegerField()
    sending = serializers.IntegerField()
    sent = serializers.IntegerField(help_text="Handed to the provider (includes delivered and bounced).")
    delivered = serializers.IntegerField()
    bounced = serializers.IntegerField()
    failed = serializers.IntegerField()
    skipped = serializers.IntegerField(help_text="Left out at send time: opted out, unsubscribed, suppressed…")
    cancelled = serializers.IntegerField()
    percent = serializers.FloatField()


class FailureReasonSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["failed", "bounced"])
    reason = serializers.CharField(help_text="As recorded on the messages: a template error, the provider's answer…")
    count = serializers.IntegerField()


class RunFailuresSerializer(serializers.Serializer):
    total = serializers.IntegerField(help_text="Failed and bounced messages.")
    reasons = FailureReasonSerializer(many=True, help_text="The commonest reasons first (at most 10).")
    more = serializers.IntegerField(help_text="Failed and bounced messages with other reasons.")


class RunSerializer(serializers.ModelSerializer):
    campaign = serializers.UUIDField(source="campaign_id", read_only=True)
    progress = serializers.SerializerMethodField()
    failures = serializers.SerializerMethodField()
    estimated_completion = serializers.SerializerMethodField()
    estimate_basis = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = [
            "id",
            "campaign",
            "number",
            "status",
            "status_reason",
            # Waiting for the audience service at its start: since when, and when it tries again.
            "waiting_since",
            "retry_at",
            "trigger",
            # The auto-winner's test share ("test") or the winner sent to the rest ("winner"); "" otherwise.
            "phase",
            "scheduled_for",
            "audience_count",
            "holdout_count",
            "control_count",
            "message_count",
            "excluded",
            "progress",
            "failures",
            "estimated_completion",
            "estimate_basis",
            "created_at",
            "fanned_out_at",
            "started_sending_at",
            "paused_at",
            "paused_by",
            "finished_at",
        ]
        read_only_fields = fields

    @extend_schema_field(RunProgressSerializer)
    def get_progress(self, run: Run) -> dict[str, Any]:
        return run_progress(run)

    @extend_schema_field(RunFailuresSerializer)
    def get_failures(self, run: Run) -> dict[str, Any]:
        """Why messages failed or bounced, grouped by reason: for a page of runs, one query for all of them."""
        failures = self.__dict__.setdefault("_failures", {})
        if run.pk not in failures:
            page = getattr(self.parent, "instance", None) if self.parent is not None else None
            failures.update(run_failure_reasons(list(page) if page is not None else [run]))
        return failures.get(run.pk) or run_failure_reasons([run])[run.pk]

    def _estimate(self, run: Run) -> RunEstimate:
        # Both fields come from one estimate (one query, one rate reading) per run.
        estimates = self.__dict__.setdefault("_estimates", {})
        if run.pk not in estimates:
            estimates[run.pk] = run_estimate(run)
        return estimates[run.pk]

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_estimated_completion(self, run: Run) -> Any:
        """While the run goes, when it should finish: at the rate observed once sending has started (never above
        the limits), through the send windows and after the last deferred message is due. Once finished, the
        actual finish; null while paused or with nothing to go on yet."""
        at = self._estimate(run).at
        return serializers.DateTimeField().to_representation(at) if at else None

    @extend_schema_field(serializers.CharField())
    def get_estimate_basis(self, run: Run) -> str:
        """What the estimate rests on: "at 600/min limit", "observed 512/min", "waits for send window 08:00 GMT";
        "paused", "finished"…"""
        return self._estimate(run).explanation


@extend_schema_view(
    list=extend_schema(parameters=[OpenApiParameter("campaign", str, description="Only this campaign's runs.")])
)
class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Executions of the organisation's campaigns with their audience snapshot and live progress."""

    serializer_class = RunSerializer
    lookup_value_regex = r"[0-9a-fA-F-]{36}"

    def get_queryset(self) -> QuerySet[Run]:
        if getattr(self, "swagger_fake_view", False):
            return Run.objects.none()
        campaign = self.kwargs.get("campaign_pk") or self.request.query_params.get("campaign")
        if campaign is not None:
            serializers.UUIDField().run_validation(campaign)
        return run_list(self.request.actor, campaign_id=campaign)


# --- receipts ---------------------------------------------------------------------------------------------------


class ReceiptSerializer(serializers.Serializer):
    message_id = serializers.IntegerField(required=False, min_value=1, help_text="Our message id, or…")
    provider_message_id = serializers.CharField(required=False, max_length=200, help_text="…the provider's id.")
    status = serializers.ChoiceField(choices=receipts.STATUSES)
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500)
    occurred_at = serializers.DateTimeField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("message_id") and not attrs.get("provider_message_id"):
            raise serializers.ValidationError("Give message_id or provider_message_id.")
        return attrs


class ReceiptBatchSerializer(serializers.Serializer):
    receipts = ReceiptSerializer(many=True, min_length=1, max_length=1000)


class ReceiptResultSerializer(serializers.Serializer):
    applied = serializers.IntegerField(help_text="Receipts that changed a message.")
    ignored = serializers.ListField(
        child=serializers.IntegerField(), help_text="Indexes of receipts that matched no message of yours or repeat."
    )
    suppressed = serializers.IntegerField(help_text="Addresses added to the suppression list.")


class ReceiptView(APIView):
    """Providers report what happened to messages: delivered, bounced, complained, failed. Authenticated with an
    organisation API key; only that organisation's messages are touched; repeats are harmless."""

    # A receipt can mark a message complained and suppress its address: not for analyst or compliance keys.
    write_roles = PROVIDER_POSTERS

    @extend_schema(request=ReceiptBatchSerializer, responses={200: ReceiptResultSerializer})
    def post(self, request: Request) -> Response:
        payload = ReceiptBatchSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        result = receipts.receipts_apply(actor=request.actor, receipts=payload.validated_data["receipts"])
        return Response(result)


# --- in-app inbox -------------------------------------------------------------------------------------------------


class InboxMessageSerializer(serializers.ModelSerializer):
    id = serializers.IntegerField(source="message_id", read_only=True)
    read = serializers.SerializerMethodField()

    class Meta:
        model = InboxMessage
        fields = ["id", "title", "body", "action_url", "icon_url", "created_at", "read", "read_at", "campaign_id"]
        read_only_fields = fields

    def get_read(self, message: InboxMessage) -> bool:
        return message.read_at is not None


CONTACT_PARAM = OpenApiParameter("contact", str, required=True, description="The contact's external id.")


@extend_schema_view(
    list=extend_schema(
        parameters=[CONTACT_PARAM, OpenApiParameter("unread", bool, description="Only unread messages.")]
    )
)
class InboxViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """A contact's in-app messages for client apps (organisation API key + the contact's external id)."""

    serializer_class = InboxMessageSerializer
    read_roles = write_roles = INBOX_CLIENTS

    def _contact(self) -> Any:
        external_id = self.request.query_params.get("contact", "")
        if not external_id:
            raise serializers.ValidationError({"contact": ["Give the contact's external id."]})
        return inbox.inbox_contact(self.request.actor, external_id)

    def get_queryset(self) -> QuerySet[InboxMessage]:
        if getattr(self, "swagger_fake_view", False):
            return InboxMessage.objects.none()
        unread = self.request.query_params.get("unread", "").lower() in ("1", "true", "yes")
        return inbox.inbox_messages(self.request.actor, self._contact(), unread_only=unread)

    @extend_schema(
        parameters=[CONTACT_PARAM], responses={200: inline_serializer("Unread", {"unread": serializers.IntegerField()})}
    )
    @action(detail=False, methods=["get"], url_path="unread-count")
    def unread_count(self, request: Request) -> Response:
        return Response({"unread": inbox.inbox_unread_count(request.actor, self._contact())})

    @extend_schema(
        parameters=[CONTACT_PARAM, OpenApiParameter("id", int, OpenApiParameter.PATH, description="The message's id.")],
        request=None,
        responses={200: InboxMessageSerializer},
    )
    @action(detail=True, methods=["post"])
    def read(self, request: Request, pk: str) -> Response:
        try:
            message_id = int(pk)
        except ValueError as exc:
            raise Http404 from exc
        message = inbox.inbox_mark_read(request.actor, self._contact(), message_id)
        return Response(InboxMessageSerializer(message).data)


class TriggerDecisionsView(APIView):
    """How a triggered campaign's events were decided: matched, filtered_by_condition, not_in_audience, capped,
    deferred_quiet_hours, skipped_quiet_hours, ignored_paused, global_control, queued."""

    @extend_schema(responses={200: inline_serializer("TriggerDecisions", {"decisions": serializers.DictField()})})
    def get(self, request: Request, campaign_pk: Any) -> Response:
        from campaigns.models import Campaign
        from campaigns.selectors import campaign_get
        from delivery.triggers import trigger_decisions

        try:
            campaign = campaign_get(request.actor, campaign_pk, include_deleted=True)
        except Campaign.DoesNotExist as exc:
            raise Http404 from exc
        return Response({"decisions": trigger_decisions(campaign)})
