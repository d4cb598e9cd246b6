"""The metrics app; on start it registers the campaign page's results panel and, on PostgreSQL,
the touches today's stage spells follow (metrics.stage_durations)."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MetricsConfig(AppConfig):
    name = "metrics"
    verbose_name = _("Metrics")

    def ready(self) -> None:
        from campaigns import extensions as campaign_extensions
        from crm import hooks
        from metrics import activity, stage_durations, views

        campaign_extensions.campaign_panels.register("results", views.campaign_results_panel)
        if activity.available():
            hooks.touch_claimers.register(stage_durations.CONSUMER, "metrics.stage_durations")
            hooks.touch_skips.register(stage_durations.CONSUMER, stage_durations.touch_skips)
