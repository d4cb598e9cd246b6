"""DRF pieces every app's API shares."""

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework import serializers

from core import conditions


class ConditionField(serializers.JSONField):
    """A condition in the language of DESIGN §3, validated on input with the bad node's path.

    `check=False` leaves validation to the service, for conditions whose values refer to
    thresholds only the service knows (stage entry conditions)."""

    def __init__(self, *args, check: bool = True, **kwargs) -> None:
        self.check = check
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
        component = ResolvedComponent(name="Condition", type=ResolvedComponent.SCHEMA,
                                      object="Condition", schema=conditions.json_schema())
        auto_schema.registry.register_on_missing(component)
        return component.ref
