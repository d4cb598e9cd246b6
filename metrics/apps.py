"""The metrics app; on start it registers the campaign page's results panel (metrics.views)."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MetricsConfig(AppConfig):
    name = "metrics"
    verbose_name = _("Metrics")

    def ready(self) -> None:
        from campaigns import extensions as campaign_extensions
        from metrics import views

        campaign_extensions.campaign_panels.register("results", views.campaign_results_panel)
