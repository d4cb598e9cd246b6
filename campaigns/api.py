"""REST API of outreach (DESIGN §4): SOPs with nested steps, campaigns with schedule/cancel,
the outbox (messages) with delivery receipts, operator tasks, template preview, the policy."""

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from campaigns import selectors, services
from campaigns.models import (
    Campaign,
    Category,
    Channel,
    Message,
    OperatorTask,
    OutreachPolicy,
    Sop,
    SopStep,
)
from core import access
from core.exceptions import ApplicationError
from core.filters import MomentFilter
from core.serializers import ConditionField, LocalTimeField, MomentField
from crm import selectors as crm_selectors
from lifecycle.models import Stage, StageModel
from tagging.models import Segment


# Conditions are validated by the services, which name where the condition is in the request
# (`steps[0].condition.op: …`, `goal.…`, `condition.…`).
class SopStepSerializer(serializers.ModelSerializer):
    condition = ConditionField(required=False, allow_null=True, check=False)
    at_time = LocalTimeField(required=False, allow_null=True)
    stats = serializers.SerializerMethodField()

    class Meta:
        model = SopStep
        fields = ["id", "order", "delay_minutes", "day", "at_time", "channel", "category",
                  "template", "condition", "paused", "paused_reason", "counted_since", "stats"]
        read_only_fields = ["paused_reason", "counted_since"]

    def get_stats(self, step) -> dict:
        return self.context.get("stats", {}).get(("step", step.pk), {"sends": 0, "blocks": 0})


class SopSerializer(serializers.ModelSerializer):
    model = serializers.SlugRelatedField(slug_field="key", queryset=StageModel.objects.all())
    stage = serializers.CharField(source="stage.key", help_text=gettext_lazy("Stage key."))
    steps = SopStepSerializer(many=True)
    goal = ConditionField(required=False, allow_null=True, check=False)
    override_stage_guard = serializers.BooleanField(
        required=False, help_text=gettext_lazy(
            "Admins only: send promotional steps to journey interest / value intro anyway."))
    overridden_by = serializers.SlugRelatedField(slug_field="username", read_only=True,
                                                 allow_null=True)

    class Meta:
        model = Sop
        fields = ["id", "name", "description", "model", "stage", "active", "holdout_percent",
                  "goal", "steps", "override_stage_guard", "overridden_by", "built_in",
                  "created_at"]
        read_only_fields = ["built_in", "created_at"]


class CampaignSerializer(serializers.ModelSerializer):
    condition = ConditionField(required=False, allow_null=True, check=False)
    segment = serializers.PrimaryKeyRelatedField(queryset=Segment.objects.all(), required=False,
                                                 allow_null=True)
    override_stage_guard = serializers.BooleanField(required=False)
    overridden_by = serializers.SlugRelatedField(slug_field="username", read_only=True,
                                                 allow_null=True)
    send_at = MomentField(required=False, allow_null=True, label=gettext_lazy("send at"))
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Campaign
        fields = ["id", "name", "condition", "segment", "channel", "category", "template",
                  "send_at", "holdout_percent", "status", "audience_size", "started_at",
                  "finished_at", "override_stage_guard", "overridden_by", "paused",
                  "paused_reason", "counted_since", "progress", "created_at"]
        read_only_fields = ["status", "audience_size", "started_at", "finished_at", "paused",
                            "paused_reason", "counted_since", "created_at"]

    def get_progress(self, campaign) -> dict:
        progress = selectors.campaign_progress(campaign=campaign)
        stats = self.context.get("stats", {}).get(("campaign", campaign.pk),
                                                  {"sends": 0, "blocks": 0})
        # A block: the customer deleted us within 48 h of this campaign's message.
        return {**progress, "blocks": stats["blocks"],
                "block_rate": round(stats["blocks"] / stats["sends"], 4) if stats["sends"] else 0}


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = ["id", "customer", "channel", "category", "content", "status", "skip_reason",
                  "due_at", "sent_at", "delivered_at", "read_at", "replied_at", "clicked_at",
                  "attempts", "last_error", "provider_id", "sop_step", "enrollment", "campaign",
                  "created_at"]



class MessageRetrySerializer(serializers.Serializer):
    ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), required=False,
        max_length=services.RETRY_MAX_IDS,
        help_text=gettext_lazy("The failed messages to queue again."))
    all_failed = serializers.BooleanField(
        required=False, help_text=gettext_lazy(
            "Every failed message instead, narrowed by `campaign` and `sop` when given."))
    campaign = serializers.IntegerField(required=False, min_value=1)
    sop = serializers.IntegerField(required=False, min_value=1)

    def validate(self, data):
        if "ids" in data and data.get("all_failed"):
            raise serializers.ValidationError(_("give ids or all_failed, not both"))
        if "ids" not in data and not data.get("all_failed"):
            raise serializers.ValidationError(
                _("give ids (a list of message ids) or all_failed: true"))
        return data

class OperatorTaskSerializer(serializers.ModelSerializer):
    customer_name = serializers.CharField(source="customer.name", read_only=True, default=None)

    class Meta:
        model = OperatorTask
        fields = ["id", "kind", "title", "body", "customer", "customer_name", "due_at",
                  "status", "closed_at", "closed_note", "message", "created_at"]


class PolicySerializer(serializers.ModelSerializer):
    class Meta:
        model = OutreachPolicy
        exclude = ["id"]


def _stage(model: StageModel, key: str) -> Stage:
    stage = Stage.objects.filter(model=model, key=key).first()
    if stage is None:
        raise ApplicationError(_("stage: %(model)s has no stage %(stage)r")
                               % {"model": model.key, "stage": key})
    return stage


class SopViewSet(viewsets.ModelViewSet):
    """Stage-matched SOPs; steps are written nested with the SOP."""

    serializer_class = SopSerializer
    permission_classes = [access.AdminWritePermission]
    queryset = Sop.objects.select_related("model", "stage", "overridden_by").prefetch_related(
        "steps")
    filterset_fields = ["active"]

    def _with_stats(self, sops) -> dict:
        """Sends and blocks of just the steps shown, not of the whole outbox."""
        step_ids = [step.pk for sop in sops for step in sop.steps.all()]
        return {**self.get_serializer_context(),
                "stats": services.block_stats(step_ids=step_ids, campaign_ids=[])}

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        serializer = SopSerializer(page, many=True, context=self._with_stats(page))
        return self.get_paginated_response(serializer.data)

    def retrieve(self, request, *args, **kwargs):
        sop = self.get_object()
        return Response(SopSerializer(sop, context=self._with_stats([sop])).data)

    def perform_destroy(self, instance):
        services.sop_delete(sop=instance)

    def _save(self, serializer, sop):
        data = dict(serializer.validated_data)
        steps = data.pop("steps", None)
        stage_key = data.pop("stage", {}).get("key") if "stage" in data else None
        model = data.get("model") or (sop.model if sop else None)
        if stage_key is not None:
            data["stage"] = _stage(model, stage_key)
        serializer.instance = services.sop_save(sop=sop, actor=self.request.user, steps=steps,
                                                **data)

    def perform_create(self, serializer):
        self._save(serializer, None)

    def perform_update(self, serializer):
        self._save(serializer, serializer.instance)


class CampaignFilter(filters.FilterSet):
    status = filters.ChoiceFilter(choices=Campaign.Status.choices)

    class Meta:
        model = Campaign
        fields = ["status", "channel"]


class CampaignViewSet(viewsets.ModelViewSet):
    """One-off or scheduled sends (群发) to a segment or condition."""

    serializer_class = CampaignSerializer
    permission_classes = [access.AdminWritePermission]
    filterset_class = CampaignFilter

    def get_queryset(self):
        return selectors.campaign_list()

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if self.action == "retrieve" and self.kwargs.get("pk", "").isdigit():
            context["stats"] = services.block_stats(step_ids=[],
                                                    campaign_ids=[int(self.kwargs["pk"])])
        return context

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        context = {**self.get_serializer_context(), "stats": services.block_stats(
            step_ids=[], campaign_ids=[c.pk for c in page])}
        return self.get_paginated_response(CampaignSerializer(page, many=True,
                                                              context=context).data)

    def perform_create(self, serializer):
        serializer.instance = services.campaign_save(campaign=None, actor=self.request.user,
                                                     **serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = services.campaign_save(campaign=serializer.instance,
                                                     actor=self.request.user,
                                                     **serializer.validated_data)

    def perform_destroy(self, instance):
        services.campaign_delete(campaign=instance)

    @extend_schema(request=None, responses=CampaignSerializer)
    @action(detail=True, methods=["post"])
    def schedule(self, request, pk=None):
        """Start now, or at `send_at`; the audience is fixed when sending starts."""
        if not access.is_admin(request.user):
            self.permission_denied(request, message=_("Only admins may start campaigns."))
        campaign = services.campaign_schedule(campaign=self.get_object(), actor=request.user)
        return Response(CampaignSerializer(campaign).data)

    @extend_schema(request=None, responses=inline_serializer("CampaignCancelled", {
        "skipped": serializers.IntegerField()}))
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Stop the unsent rest."""
        if not access.is_admin(request.user):
            self.permission_denied(request, message=_("Only admins may cancel campaigns."))
        return Response({"skipped": services.campaign_cancel(campaign=self.get_object())})

    @extend_schema(request=None, responses=CampaignSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Send a campaign that paused itself (block rate over the policy's threshold) after
        all: its waiting messages go out, and its block rate is counted afresh."""
        campaign = services.campaign_resume(campaign=self.get_object(), actor=request.user)
        return Response(CampaignSerializer(campaign).data)


class MessageFilter(filters.FilterSet):
    status = filters.MultipleChoiceFilter(choices=Message.Status.choices)
    channel = filters.ChoiceFilter(choices=Channel.choices)
    category = filters.ChoiceFilter(choices=Category.choices)
    due_before = MomentFilter(field_name="due_at", lookup_expr="lt")

    class Meta:
        model = Message
        fields = ["customer", "campaign", "sop_step", "status", "channel", "category"]


class MessageViewSet(access.IngestThrottled, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                     viewsets.GenericViewSet):
    """The outbox: every message, its status and why it was skipped."""

    ingest_actions = frozenset({"receipts"})
    serializer_class = MessageSerializer
    permission_classes = [access.CustomerDataPermission]
    filterset_class = MessageFilter
    queryset = Message.objects.none()

    def get_queryset(self):
        return access.scope_customers(Message.objects.all(), self.request.user,
                                      owner_field="customer__owner").order_by("-due_at", "-id")

    @extend_schema(
        request=inline_serializer("Receipt", {
            "message": serializers.IntegerField(required=False),
            "provider_id": serializers.CharField(required=False),
            "status": serializers.ChoiceField(choices=["delivered", "read", "replied",
                                                       "clicked"]),
            "at": serializers.DateTimeField(required=False)}),
        responses=inline_serializer("ReceiptReport", {
            "accepted": serializers.IntegerField(), "duplicates": serializers.IntegerField(),
            "rejected": serializers.ListField(child=serializers.DictField())}))
    @action(detail=False, methods=["post"])
    def receipts(self, request):
        """Delivery receipts from a channel (one or a list); each becomes a customer event."""
        return Response(services.receipts_record(items=request.data, actor=request.user))

    @extend_schema(request=MessageRetrySerializer, responses=inline_serializer(
        "MessagesRetried", {"retried": serializers.IntegerField()}))
    @action(detail=False, methods=["post"])
    def retry(self, request):
        """Admins: queue failed messages again (`ids`, or `all_failed` with an optional
        `campaign` / `sop`); messages that are not failed are left alone."""
        if not access.is_admin(request.user):
            self.permission_denied(request, message=_("Only admins may retry failed messages."))
        serializer = MessageRetrySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "ids" in data:
            retried = services.messages_retry(actor=request.user, ids=data["ids"])
        else:
            retried = services.messages_retry(actor=request.user, queryset=(
                selectors.outbox_messages(user=request.user, status=Message.Status.FAILED,
                                          campaign=data.get("campaign"), sop=data.get("sop"))))
        return Response({"retried": retried})


class OperatorTaskViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin,
                          viewsets.GenericViewSet):
    """Your to-dos: 1-to-1 follow-ups, churn warnings, alerts (admins see everyone's)."""

    serializer_class = OperatorTaskSerializer
    filterset_fields = ["status", "kind"]
    queryset = OperatorTask.objects.none()

    def get_queryset(self):
        qs = OperatorTask.objects.select_related("customer")
        if not (access.is_admin(self.request.user)
                and self.request.query_params.get("all") == "1"):
            qs = qs.filter(assignee=self.request.user)
        return qs

    @extend_schema(request=inline_serializer("TaskClose", {
        "status": serializers.ChoiceField(choices=["done", "skipped"]),
        "note": serializers.CharField(required=False)}), responses=OperatorTaskSerializer)
    @action(detail=True, methods=["post"])
    def close(self, request, pk=None):
        data = request.data if isinstance(request.data, dict) else {}
        task = services.task_close(task=self.get_object(), actor=request.user,
                                   status=data.get("status", ""),
                                   note=str(data.get("note") or ""))
        return Response(OperatorTaskSerializer(task).data)


class TemplatePreviewView(APIView):
    """Render a template for one of your customers (or a sample customer)."""

    permission_classes = [access.CustomerDataPermission]

    @extend_schema(request=inline_serializer("TemplatePreviewIn", {
        "template": serializers.CharField(),
        "customer": serializers.IntegerField(required=False)}),
        responses=inline_serializer("TemplatePreviewOut", {"content": serializers.CharField()}))
    def post(self, request):
        data = request.data if isinstance(request.data, dict) else {}
        customer = None
        if data.get("customer") is not None:
            try:
                customer = crm_selectors.customer_get(user=request.user, pk=int(data["customer"]))
            except (TypeError, ValueError):
                raise ApplicationError(_("customer: a customer id")) from None
        return Response({"content": services.template_preview(
            source=data.get("template", ""), customer=customer)})


class PolicyView(APIView):
    """The send-time policy: frequency caps, block-rate pause threshold, retries."""

    permission_classes = [access.AdminWritePermission]

    @extend_schema(responses=PolicySerializer)
    def get(self, request):
        return Response(PolicySerializer(services.policy()).data)

    @extend_schema(request=PolicySerializer, responses=PolicySerializer)
    def put(self, request):
        serializer = PolicySerializer(services.policy(), data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        return Response(PolicySerializer(services.policy_save(**serializer.validated_data)).data)

