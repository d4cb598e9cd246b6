"""REST API of lifecycle (DESIGN §4): stage models with nested stages and thresholds,
simulation, evaluation on demand, manual moves."""

from django.db.models import Count, Prefetch
from django.shortcuts import get_object_or_404
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from core import access
from core.exceptions import ApplicationError
from core.serializers import ConditionField
from crm import selectors as crm_selectors
from lifecycle import services
from lifecycle.models import CustomerStage, Stage, StageModel, StageTransition


class StageSerializer(serializers.ModelSerializer):
    condition = ConditionField(
        thresholds=True, required=False, allow_null=True, help_text=gettext_lazy(
            "Entry condition; values may refer to the model's thresholds as "
            "{\"threshold\": \"name\"}. No condition = the fallback stage."))
    customers = serializers.SerializerMethodField(help_text=gettext_lazy(
        "Customers in the stage now."))

    class Meta:
        model = Stage
        fields = ["key", "name", "description", "position", "precedence", "color", "condition",
                  "win_back_from", "customers"]
        extra_kwargs = {"position": {"required": False}}

    def get_customers(self, stage) -> int:
        counted = getattr(stage, "customer_count", None)
        return counted if counted is not None else stage.customer_stages.count()


class StageModelSerializer(serializers.ModelSerializer):
    stages = StageSerializer(many=True, required=False)

    class Meta:
        model = StageModel
        fields = ["key", "name", "description", "active", "monotonic", "thresholds",
                  "lock_days", "interval_minutes", "built_in", "order", "last_evaluated_at",
                  "stages"]
        read_only_fields = ["built_in", "last_evaluated_at"]


class TransitionSerializer(serializers.ModelSerializer):
    customer = serializers.IntegerField(source="customer_id")
    model = serializers.CharField(source="model.key")
    from_stage = serializers.CharField(source="from_key", allow_blank=True)
    to_stage = serializers.CharField(source="to_key")
    actor = serializers.CharField(source="actor.username", default=None)

    class Meta:
        model = StageTransition
        fields = ["id", "customer", "model", "from_stage", "to_stage", "at", "source", "reason",
                  "actor", "win_back", "backward"]


SIMULATE_IN = inline_serializer("SimulateIn", {
    "thresholds": serializers.DictField(child=serializers.FloatField(), help_text=gettext_lazy(
        "Proposed threshold values; with `stages`, the model's whole set of thresholds.")),
    "stages": StageSerializer(many=True, required=False, help_text=gettext_lazy(
        "Optional: a proposed list of stages (as when saving the model) to simulate instead "
        "of the stored ones.")),
    "monotonic": serializers.BooleanField(required=False, help_text=gettext_lazy(
        "Optional, with `stages`: the proposed monotonic flag."))})
SIMULATE_OUT = inline_serializer("SimulateOut", {
    "model": serializers.CharField(), "thresholds": serializers.DictField(),
    "stages": serializers.ListField(child=inline_serializer("SimulatedStage", {
        "stage": serializers.CharField(), "name": serializers.CharField(),
        "color": serializers.CharField(), "now": serializers.IntegerField(),
        "proposed": serializers.IntegerField()})),
    "moves": serializers.ListField(child=inline_serializer("SimulatedMove", {
        "from": serializers.CharField(allow_null=True), "to": serializers.CharField(),
        "count": serializers.IntegerField()})),
})
EVALUATE_OUT = inline_serializer("EvaluateOut", {
    "model": serializers.CharField(), "changed": serializers.IntegerField(),
    "duration_ms": serializers.IntegerField(), "moves": serializers.ListField(
        child=serializers.DictField())})


class StageModelViewSet(viewsets.ModelViewSet):
    """Stage models by key, with their stages and thresholds; admins change them."""

    serializer_class = StageModelSerializer
    permission_classes = [access.AdminWritePermission]
    lookup_field = "key"
    queryset = StageModel.objects.prefetch_related(Prefetch(
        "stages", queryset=Stage.objects.annotate(customer_count=Count("customer_stages"))
        .order_by("position")))

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        serializer.instance = services.stage_model_save(model=None, stages=data.pop("stages", []),
                                                        **data)

    def perform_update(self, serializer):
        data = dict(serializer.validated_data)
        serializer.instance = services.stage_model_save(
            model=serializer.instance, stages=data.pop("stages", None), **data)

    def perform_destroy(self, instance):
        services.stage_model_delete(model=instance)

    @extend_schema(request=SIMULATE_IN, responses=SIMULATE_OUT)
    @action(detail=True, methods=["post"])
    def simulate(self, request, key=None):
        """How many customers would be in each stage under changed thresholds — or under a
        proposed list of stages — and who would move where: computed, not written."""
        data = request.data if isinstance(request.data, dict) else {}
        thresholds = data.get("thresholds")
        if "stages" not in data:
            if not isinstance(thresholds, dict):
                raise ApplicationError(_("thresholds: an object of proposed values, e.g. "
                                         "{\"dormant_days\": 45}"))
            return Response(services.stage_model_simulate(model=self.get_object(),
                                                          thresholds=thresholds))
        stages = StageSerializer(data=data["stages"], many=True)
        stages.is_valid(raise_exception=True)
        monotonic = data.get("monotonic")
        return Response(services.stage_model_simulate(
            model=self.get_object(), thresholds=thresholds, stages=stages.validated_data,
            monotonic=monotonic if isinstance(monotonic, bool) else None))

    @extend_schema(request=None, responses=EVALUATE_OUT)
    @action(detail=True, methods=["post"])
    def evaluate(self, request, key=None):
        """Evaluate the model for every customer now (admins)."""
        if not access.is_admin(request.user):
            self.permission_denied(request, message=_("Only admins may run an evaluation."))
        model = self.get_object()
        if not model.active:
            raise ApplicationError(_("%(model)s is inactive; activate it to evaluate it.")
                                   % {"model": model.name})
        result = services.stage_model_evaluate(model=model)
        if result is None:
            return Response({"message": _("This model is being evaluated by another worker right "
                                          "now.")}, status=status.HTTP_409_CONFLICT)
        return Response(result.as_dict())

    @extend_schema(responses=TransitionSerializer(many=True))
    @action(detail=True, methods=["get"])
    def transitions(self, request, key=None):
        """Recent transitions of this model, newest first (customers you may see)."""
        model = self.get_object()
        queryset = access.scope_customers(
            StageTransition.objects.filter(model=model).select_related("model", "actor"),
            request.user, owner_field="customer__owner").order_by("-at", "-id")
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(TransitionSerializer(page, many=True).data)

    @extend_schema(request=inline_serializer("StageDelete", {"move_to": serializers.CharField()}),
                   responses=inline_serializer("StageDeleted", {"moved": serializers.IntegerField()}))
    @action(detail=True, methods=["post"], url_path=r"stages/(?P<stage_key>[-\w]+)/delete")
    def delete_stage(self, request, key=None, stage_key=None):
        """Delete a stage; its customers move to `move_to` (a stage key), each move recorded."""
        if not access.is_admin(request.user):
            self.permission_denied(request, message=_("Only admins may delete stages."))
        model = self.get_object()
        stage = get_object_or_404(Stage, model=model, key=stage_key)
        move_to_key = request.data.get("move_to") if isinstance(request.data, dict) else None
        move_to = Stage.objects.filter(model=model, key=move_to_key).first()
        if move_to is None:
            raise ApplicationError(_("move_to: name the stage of %(model)s its customers move to")
                                   % {"model": model.key})
        return Response({"moved": services.stage_delete(stage=stage, move_to=move_to,
                                                        actor=request.user)})


class CustomerStageView(APIView):
    """Move a customer by hand: `{"model": "value", "stage": "mature", "reason": "..."}`;
    `{"model": "value", "unlock": true}` lets evaluation move them again."""

    permission_classes = [access.CustomerDataPermission]

    @extend_schema(
        request=inline_serializer("StageMove", {
            "model": serializers.CharField(), "stage": serializers.CharField(required=False),
            "reason": serializers.CharField(required=False),
            "unlock": serializers.BooleanField(required=False)}),
        responses=TransitionSerializer)
    def post(self, request, pk: int):
        customer = crm_selectors.customer_get(user=request.user, pk=pk)
        data = request.data if isinstance(request.data, dict) else {}
        model = StageModel.objects.filter(key=data.get("model")).first()
        if model is None:
            raise ApplicationError(_("model: unknown stage model %(key)r")
                                   % {"key": data.get("model")})
        if data.get("unlock") is True:
            unlocked = services.customer_stage_unlock(customer=customer, model=model)
            return Response({"unlocked": unlocked})
        stage = Stage.objects.filter(model=model, key=data.get("stage")).first()
        if stage is None:
            raise ApplicationError(_("stage: model %(model)s has no stage %(stage)r")
                                   % {"model": model.key, "stage": data.get("stage")})
        reason = data.get("reason")
        transition = services.customer_stage_move(
            customer=customer, model=model, stage=stage,
            reason=reason if isinstance(reason, str) else "", actor=request.user)
        return Response(TransitionSerializer(transition).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=inline_serializer("CustomerStages", {
        "stages": serializers.ListField(child=serializers.DictField())}))
    def get(self, request, pk: int):
        customer = crm_selectors.customer_get(user=request.user, pk=pk)
        rows = (CustomerStage.objects.filter(customer=customer)
                .select_related("model", "stage").order_by("model__order"))
        return Response({"stages": [{
            "model": cs.model.key, "stage": cs.stage.key, "name": cs.stage.name,
            "entered_at": cs.entered_at, "source": cs.source, "locked_until": cs.locked_until,
        } for cs in rows]})
