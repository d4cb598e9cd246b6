from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class TaggingConfig(AppConfig):
    name = "tagging"
    verbose_name = _("Tags")

    def ready(self) -> None:
        from core.conditions import register_field
        from crm import extensions as crm_extensions
        from crm import hooks, timeline
        from tagging import conditions, extensions, services, views

        register_field(conditions.FIELD)
        crm_extensions.customer_fields.register("tags", extensions.TAGS_FIELD)
        crm_extensions.customer_filters.register("tag", extensions.TAG_FILTER)
        crm_extensions.customer_filters.register("segment", extensions.SEGMENT_FILTER)
        timeline.sources.register("tag", extensions.TIMELINE)
        crm_extensions.customer_panels.register("tags", views.customer_tags_panel)
        crm_extensions.personal_data.register("tags", extensions.PERSONAL_DATA)
        hooks.touch_consumers.register("tagging", services.tag_rules_run_for_customers)
        hooks.touch_skips.register("tagging", services.touch_skips)
        from tagging import segment_index

        if segment_index.available():
            # Its touches are claimed by its builds; switched off, `prune_touches` drops them.
            hooks.touch_claimers.register(segment_index.CONSUMER, "tagging.segment_index")
        services.register_customer_list_extensions()
