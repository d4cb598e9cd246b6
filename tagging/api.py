"""REST API of tagging (DESIGN §4): tag groups, tags, rules, segments, manual and bulk tagging."""

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from core import access, conditions
from core.exceptions import ApplicationError
from core.serializers import ConditionField
from crm import selectors as crm_selectors
from crm.api import CustomerSerializer
from tagging import selectors, services
from tagging.models import BulkTagJob, Segment, Tag, TagGroup, TagRule, TagRuleRun


@extend_schema_field({"oneOf": [{"type": "integer"}, {"type": "string"}]})
class TagRefField(serializers.Field):
    """A tag named by its id or its name (a name two groups share asks for the id)."""

    def to_internal_value(self, data):
        if not isinstance(data, int | str) or isinstance(data, bool):
            raise serializers.ValidationError(_("name a tag by its id or its name"))
        return services.tags_resolve([data], path=self.field_name)[0]

    def to_representation(self, value):
        return value.pk


class TagGroupSerializer(serializers.ModelSerializer):
    class Meta:
        model = TagGroup
        fields = ["id", "name", "key", "exclusive", "description", "order", "created_at"]
        read_only_fields = ["key", "created_at"]


class TagSerializer(serializers.ModelSerializer):
    customers = serializers.IntegerField(read_only=True, source="customer_count",
                                         help_text=gettext_lazy("Customers holding it now."))

    class Meta:
        model = Tag
        fields = ["id", "name", "group", "key", "color", "description", "order", "customers",
                  "created_at"]
        read_only_fields = ["key", "created_at"]


class TagRuleSerializer(serializers.ModelSerializer):
    tag = TagRefField(help_text=gettext_lazy("Tag id (or unique name)."))
    condition = ConditionField()

    class Meta:
        model = TagRule
        fields = ["id", "name", "tag", "condition", "mode", "active", "priority",
                  "interval_minutes", "last_run_at", "created_at"]
        read_only_fields = ["last_run_at", "created_at"]


class TagRuleRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = TagRuleRun
        fields = ["id", "trigger", "started_at", "duration_ms", "matched", "added", "removed",
                  "scope_size"]


class SegmentSerializer(serializers.ModelSerializer):
    condition = ConditionField()

    class Meta:
        model = Segment
        fields = ["id", "name", "description", "condition", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]


class PreviewSerializer(serializers.Serializer):
    condition = ConditionField()
    exact = serializers.BooleanField(
        required=False, default=False,
        help_text=gettext_lazy("Count in the database now instead of from the segment index "
                               "(a few minutes old, much faster)."))


class TagChangeInSerializer(serializers.Serializer):
    add = serializers.ListField(child=serializers.JSONField(), required=False, default=list,
                                help_text=gettext_lazy("Tag ids or names."))
    remove = serializers.ListField(child=serializers.JSONField(), required=False, default=list)
    expires_at = serializers.DateTimeField(required=False, allow_null=True,
                                           help_text=gettext_lazy("Added tags expire then."))


class BulkTagInSerializer(TagChangeInSerializer):
    ids = serializers.ListField(child=serializers.IntegerField(), required=False,
                                max_length=100_000)
    condition = ConditionField(required=False)

    def validate(self, attrs):
        if ("ids" in attrs) == ("condition" in attrs):
            raise serializers.ValidationError(_("give either ids or condition"))
        if not attrs["add"] and not attrs["remove"]:
            raise serializers.ValidationError(_("give tags to add or remove"))
        return attrs


class BulkTagJobSerializer(serializers.ModelSerializer):
    class Meta:
        model = BulkTagJob
        fields = ["id", "status", "total", "processed", "added", "removed", "error",
                  "created_at", "updated_at"]


RUN_OUT = inline_serializer("TagRuleRunResult", {
    "matched": serializers.IntegerField(), "added": serializers.IntegerField(),
    "removed": serializers.IntegerField(), "duration_ms": serializers.IntegerField()})
PREVIEW_OUT = inline_serializer("SegmentPreview", {
    "count": serializers.IntegerField(), "sample": CustomerSerializer(many=True),
    "as_of": serializers.DateTimeField(help_text=gettext_lazy(
        "When the data counted was read: the segment index's build, or now.")),
    "source": serializers.ChoiceField(choices=["index", "live"], help_text=gettext_lazy(
        "'index': from the segment index; 'live': counted in the database now."))})


def _preview(request, condition, *, exact: bool = False) -> Response:
    data = selectors.segment_preview(user=request.user, condition=condition, exact=exact)
    return Response({"count": data["count"],
                     "sample": CustomerSerializer(data["sample"], many=True).data,
                     "as_of": serializers.DateTimeField().to_representation(data["as_of"]),
                     "source": data["source"]})


class TagGroupViewSet(viewsets.ModelViewSet):
    """Tag groups; exclusive groups hold at most one tag per customer."""

    serializer_class = TagGroupSerializer
    permission_classes = [access.AdminWritePermission]
    queryset = TagGroup.objects.all()

    def perform_create(self, serializer):
        serializer.instance = services.tag_group_save(group=None, **serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = services.tag_group_save(group=serializer.instance,
                                                      **serializer.validated_data)


class TagViewSet(viewsets.ModelViewSet):
    """Tags (names unique within their group). Deleting or merging keeps customers' history."""

    serializer_class = TagSerializer
    permission_classes = [access.AdminWritePermission]
    filterset_fields = ["group"]

    def get_queryset(self):
        return selectors.tag_list()

    def perform_create(self, serializer):
        tag = services.tag_save(tag=None, **serializer.validated_data)
        serializer.instance = self.get_queryset().get(pk=tag.pk)     # with its holder count

    def perform_update(self, serializer):
        tag = services.tag_save(tag=serializer.instance, **serializer.validated_data)
        serializer.instance = self.get_queryset().get(pk=tag.pk)

    def perform_destroy(self, instance):
        services.tag_delete(tag=instance, actor=self.request.user)

    @extend_schema(request=inline_serializer("TagMerge", {"into": serializers.JSONField()}),
                   responses=inline_serializer("TagMergeResult", {
                       "added": serializers.IntegerField(), "removed": serializers.IntegerField()}))
    @action(detail=True, methods=["post"])
    def merge(self, request, pk=None):
        """Move every holder of this tag to `into` (id or name) and delete this tag."""
        source = self.get_object()
        if "into" not in request.data:
            raise ApplicationError(_("into: this field is required"))
        target = services.tags_resolve([request.data["into"]], path="into")[0]
        change = services.tag_merge(source=source, target=target, actor=request.user)
        return Response({"added": change.added, "removed": change.removed})


class TagRuleViewSet(viewsets.ModelViewSet):
    """Rules that tag customers by condition, hourly by default and on demand."""

    serializer_class = TagRuleSerializer
    permission_classes = [access.AdminWritePermission]
    queryset = TagRule.objects.select_related("tag").all()
    filterset_fields = ["tag", "active", "mode"]

    def perform_create(self, serializer):
        serializer.instance = services.tag_rule_save(rule=None, **serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = services.tag_rule_save(rule=serializer.instance,
                                                     **serializer.validated_data)

    @extend_schema(request=None, responses=RUN_OUT)
    @action(detail=True, methods=["post"])
    def run(self, request, pk=None):
        """Run the rule now; answers what it matched, added and removed."""
        if not access.is_admin(request.user):
            self.permission_denied(request, message=_("Only admins may run rules."))
        run = services.tag_rule_run(rule=self.get_object())
        if run is None:
            return Response({"message": _("This rule is running in another worker right now.")},
                            status=status.HTTP_409_CONFLICT)
        return Response({"matched": run.matched, "added": run.added, "removed": run.removed,
                         "duration_ms": run.duration_ms})

    @extend_schema(responses=TagRuleRunSerializer(many=True))
    @action(detail=True, methods=["get"])
    def runs(self, request, pk=None):
        """The rule's recent runs, newest first."""
        queryset = self.get_object().runs.all()
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(TagRuleRunSerializer(page, many=True).data)


class SegmentViewSet(viewsets.ModelViewSet):
    """Saved segments; `preview` counts them (within what you may see) and shows a sample."""

    serializer_class = SegmentSerializer
    queryset = Segment.objects.all()

    def get_permissions(self):
        if self.action in ("list", "retrieve", "preview", "saved_preview"):
            return [access.HasRole()]
        return [access.CustomerDataPermission()]

    def perform_create(self, serializer):
        serializer.instance = services.segment_save(segment=None, actor=self.request.user,
                                                    **serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = services.segment_save(segment=serializer.instance,
                                                    actor=self.request.user,
                                                    **serializer.validated_data)

    def perform_destroy(self, instance):
        services.segment_delete(segment=instance, actor=self.request.user)

    @extend_schema(request=PreviewSerializer, responses=PREVIEW_OUT)
    @action(detail=False, methods=["post"])
    def preview(self, request):
        """Count + a sample of 20 for a condition (analysts get the count only)."""
        serializer = PreviewSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return _preview(request, serializer.validated_data["condition"],
                        exact=serializer.validated_data["exact"])

    @extend_schema(request=None, responses=PREVIEW_OUT, parameters=[OpenApiParameter(
        "exact", bool, description=gettext_lazy("Count in the database now instead of from "
                                                "the segment index."))])
    @action(detail=True, methods=["get"], url_path="preview")
    def saved_preview(self, request, pk=None):
        try:
            exact = serializers.BooleanField().run_validation(
                request.query_params.get("exact", False))
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({"exact": exc.detail}) from exc
        return _preview(request, self.get_object().condition, exact=exact)


class CustomerTagsView(APIView):
    """A customer's tags: GET lists them, POST `{"add": [...], "remove": [...]}` changes them."""

    permission_classes = [access.CustomerDataPermission]

    @extend_schema(responses=inline_serializer("CustomerTagList", {
        "tags": serializers.ListField(child=serializers.DictField())}))
    def get(self, request, pk: int):
        customer = crm_selectors.customer_get(user=request.user, pk=pk)
        return Response({"tags": selectors.customer_tags(customer_id=customer.pk)})

    @extend_schema(request=TagChangeInSerializer, responses=inline_serializer(
        "CustomerTagChange", {"added": serializers.IntegerField(),
                              "removed": serializers.IntegerField(),
                              "tags": serializers.ListField(child=serializers.DictField())}))
    def post(self, request, pk: int):
        customer = crm_selectors.customer_get(user=request.user, pk=pk)
        serializer = TagChangeInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        change = services.customers_tags_change(
            customers=crm_selectors.customer_list(user=request.user).filter(pk=customer.pk),
            add=services.tags_resolve(data["add"], path="add"),
            remove=services.tags_resolve(data["remove"], path="remove"),
            actor=request.user, customer=customer, expires_at=data.get("expires_at"))
        return Response({"added": change.added, "removed": change.removed,
                         "tags": selectors.customer_tags(customer_id=customer.pk)})


class BulkTagView(APIView):
    """Add or remove tags for a list of customer ids or a condition. Up to 5000 customers are
    changed at once (200); more become a background job (202) whose progress
    `bulk-tag-jobs/{id}/` reports."""

    permission_classes = [access.CustomerDataPermission]

    @extend_schema(request=BulkTagInSerializer, responses={200: BulkTagJobSerializer,
                                                           202: BulkTagJobSerializer})
    def post(self, request):
        serializer = BulkTagInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        customers = crm_selectors.customer_list(user=request.user).order_by()
        if "ids" in data:
            customers = customers.filter(pk__in=data["ids"])
        else:
            customers = customers.filter(conditions.compile_condition(data["condition"]))
        job, change = services.bulk_tag_start(
            actor=request.user, customers=customers,
            add=services.tags_resolve(data["add"], path="add"),
            remove=services.tags_resolve(data["remove"], path="remove"),
            condition=data.get("condition"), customer_ids=data.get("ids"))
        return Response(BulkTagJobSerializer(job).data,
                        status=status.HTTP_200_OK if change else status.HTTP_202_ACCEPTED)


class BulkTagJobViewSet(mixins.RetrieveModelMixin, mixins.ListModelMixin,
                        viewsets.GenericViewSet):
    """Progress of bulk tag jobs (yours; admins see all)."""

    serializer_class = BulkTagJobSerializer
    permission_classes = [access.CustomerDataPermission]
    queryset = BulkTagJob.objects.none()

    def get_queryset(self):
        qs = BulkTagJob.objects.all()
        return qs if access.is_admin(self.request.user) else qs.filter(actor=self.request.user)

