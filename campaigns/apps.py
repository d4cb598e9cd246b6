from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = _("Outreach")

    def ready(self) -> None:
        from campaigns import extensions, services, views
        from crm import extensions as crm_extensions
        from crm.hooks import deleted_us_hooks
        from lifecycle.hooks import stage_entered_hooks

        stage_entered_hooks.register("sops", services.sops_on_stage_entered)
        deleted_us_hooks.register("warnings", services.deletion_warnings)
        crm_extensions.customer_panels.register("outreach", views.customer_outreach_panel)
        crm_extensions.personal_data.register("outreach", extensions.PERSONAL_DATA)
