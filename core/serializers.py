"""DRF pieces every app's API shares."""

from datetime import UTC, datetime

from django.utils import timezone
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core import conditions, moments


class MomentField(serializers.DateTimeField):
    """A date-time in UTC, within the years the product holds (core.moments). DRF's own field
    lets an OverflowError escape (a 500) for `0001-01-01T00:00:00` read east of UTC."""

    def to_internal_value(self, value):
        try:
            return moments.in_utc(super().to_internal_value(value))
        except (moments.MomentError, OverflowError) as exc:
            raise serializers.ValidationError(str(exc) or self.error_messages["overflow"])

    def to_representation(self, value):
        # Before 1901 the system time zone may be on local mean time (Asia/Shanghai: +08:05:43),
        # an offset RFC 3339 cannot write: such a moment is shown in UTC.
        if isinstance(value, datetime) and timezone.is_aware(value) and \
                timezone.localtime(value).utcoffset().seconds % 60:
            return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return super().to_representation(value)


@extend_schema_field({"type": "string", "pattern": r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?$",
                      "example": "20:00"})
class LocalTimeField(serializers.TimeField):
    """A time of day in the system time zone, `HH:MM[:SS]` (OpenAPI's `format: time` asks for
    an offset, which a local time of day has not)."""


class ConditionField(serializers.JSONField):
    """A condition in the language of DESIGN §3, validated on input with the bad node's path.

    `check=False` leaves validation to the service (which names the condition's place in the
    request, or knows the thresholds); `thresholds=True` marks a stage entry condition, whose
    values may be `{"threshold": name}`."""

    def __init__(self, *args, check: bool = True, thresholds: bool = False, **kwargs) -> None:
        self.check = check and not thresholds
        self.thresholds = thresholds
        super().__init__(*args, **kwargs)

    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        if self.check and data is not None:
            try:
                conditions.validate(data)
            except conditions.ConditionError as exc:
                # As a field error, so the answer names the field: "condition: all[2].op: …".
                raise serializers.ValidationError(exc.message) from exc
        return data


class ConditionFieldSchema(OpenApiSerializerFieldExtension):
    """The language's JSON Schema as the `Condition` component of the OpenAPI document."""

    target_class = ConditionField

    def map_serializer_field(self, auto_schema, direction):
        if self.target.thresholds:
            # A stage entry condition: `Condition` whose values may be {"threshold": name} —
            # checked by the service against the model's thresholds, described here.
            return {"type": "object", "additionalProperties": True,
                    "description": "A Condition whose values may name a threshold of the "
                                   "model: {\"threshold\": \"dormant_days\"}."}
        component = ResolvedComponent(name="Condition", type=ResolvedComponent.SCHEMA,
                                      object="Condition", schema=conditions.json_schema())
        auto_schema.registry.register_on_missing(component)
        return component.ref
