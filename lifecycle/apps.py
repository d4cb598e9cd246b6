from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class LifecycleConfig(AppConfig):
    name = "lifecycle"
    verbose_name = _("Lifecycle")

    def ready(self) -> None:
        from core.conditions import register_field
        from crm import extensions as crm_extensions
        from crm import hooks, timeline
        from lifecycle import conditions, extensions, services, views

        register_field(conditions.FIELD)
        crm_extensions.customer_fields.register("stages", extensions.STAGES_FIELD)
        crm_extensions.customer_filters.register("stage", extensions.STAGE_FILTER)
        timeline.sources.register("stage", extensions.TIMELINE)
        crm_extensions.customer_panels.register("stages", views.customer_stages_panel)
        crm_extensions.segment_index_parts.register("stages", extensions.INDEX_PART)
        crm_extensions.personal_data.register("stages", extensions.PERSONAL_DATA)
        hooks.touch_consumers.register("lifecycle", services.stage_models_evaluate_touched)
        hooks.touch_skips.register("lifecycle", services.touch_skips)
        services.register_customer_list_extensions()
