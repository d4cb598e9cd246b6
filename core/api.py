"""REST endpoints of the shared pieces: what the condition language offers, the audit log."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from core import conditions
from core.access import AdminOnlyPermission
from core.audit import ACTIONS
from core.filters import AuditFilter
from core.models import AuditEntry

_CHOICES = {"type": "array", "nullable": True, "items": {"type": "object"}}
FIELDS_OUT = {
    "type": "object",
    "properties": {
        "operators": {"type": "object", "additionalProperties": {"type": "string"},
                      "description": "Every operator with its name in the reader's language."},
        "groups": {"type": "object", "additionalProperties": {"type": "string"}},
        "fields": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "label": {"type": "string"},
            "section": {"type": "string"}, "description": {"type": "string"},
            "prefix": {"type": "boolean"},
            "kind": {"type": "string", "enum": ["text", "choice", "bool", "integer", "number",
                                                "datetime"]},
            "ops": {"type": "array", "items": {"type": "string"}},
            "choices": _CHOICES,
            "params": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "label": {"type": "string"},
                "kind": {"type": "string"}, "choices": _CHOICES,
                "required": {"type": "boolean"}, "multiple": {"type": "boolean"}}}},
        }}},
    },
}


class ConditionFieldsView(APIView):
    """The fields of the condition language, as the segment builder draws them."""

    @extend_schema(responses={200: OpenApiResponse(FIELDS_OUT)}, tags=["conditions"])
    def get(self, request):
        """Every field with its name, operators, value widget and choices (stage names, tag
        names and colours, channels, staff, groups) and the extra keys a leaf may carry — in
        the reader's language. A field an app registers in code appears here."""
        return Response(conditions.describe())


class AuditEntrySerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_name", read_only=True)
    action_label = serializers.SerializerMethodField()
    customer = serializers.IntegerField(source="customer_id", read_only=True)

    class Meta:
        model = AuditEntry
        fields = ["id", "at", "actor", "action", "action_label", "summary", "target_type",
                  "target_id", "customer", "data"]
        read_only_fields = fields

    def get_action_label(self, entry) -> str:
        return str(ACTIONS.get(entry.action, entry.action))


class AuditViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The audit log, newest first: who did what and when (admins)."""

    serializer_class = AuditEntrySerializer
    permission_classes = [AdminOnlyPermission]
    filterset_class = AuditFilter
    queryset = AuditEntry.objects.all()
