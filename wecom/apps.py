from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class WecomConfig(AppConfig):
    name = "wecom"
    verbose_name = _("WeCom")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from crm import extensions as crm_extensions
        from crm.extensions import PersonalData
        from wecom.models import Callback

        def erase(customer) -> dict[str, int]:
            # The callbacks as WeCom sent them name the contact: their text goes.
            return {"callbacks": Callback.objects.filter(
                external_user_id=customer.external_id).update(xml="", external_user_id="")}

        crm_extensions.personal_data.register("wecom", PersonalData(
            "wecom", lambda customer: {"callbacks": Callback.objects.filter(
                external_user_id=customer.external_id).count()}, erase))
