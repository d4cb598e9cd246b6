"""WeCom callbacks as received: one row per callback (a retry is the same row), processed by a
task (wecom.services.callback_process)."""

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Callback(models.Model):
    class Status(models.TextChoices):
        RECEIVED = "received", _("Received")
        PROCESSED = "processed", _("Processed")
        FAILED = "failed", _("Failed")

    id = models.BigAutoField(primary_key=True)
    received_at = models.DateTimeField(_("received at"), default=timezone.now)
    msg_signature = models.CharField(_("signature"), max_length=64)
    timestamp = models.CharField(_("timestamp"), max_length=32)
    nonce = models.CharField(_("nonce"), max_length=64)
    xml = models.TextField(_("decrypted XML"))
    event = models.CharField(_("event"), max_length=64, blank=True)
    change_type = models.CharField(_("change type"), max_length=64, blank=True)
    external_user_id = models.CharField(_("external user id"), max_length=128, blank=True)
    user_id = models.CharField(_("staff user id"), max_length=64, blank=True)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices,
                              default=Status.RECEIVED)
    error = models.TextField(_("error or note"), blank=True)
    processed_at = models.DateTimeField(_("processed at"), null=True, blank=True)

    class Meta:
        verbose_name = _("WeCom callback")
        verbose_name_plural = _("WeCom callbacks")
        constraints = [
            # WeCom resends a callback unchanged: the retry is this same row.
            models.UniqueConstraint(fields=["nonce", "timestamp", "msg_signature"],
                                    name="wecom_callback_once"),
        ]
        indexes = [
            # the replay guard looks nonces up; the sweeper and the dashboard look statuses up
            models.Index(fields=["nonce", "received_at"], name="wecom_cb_nonce"),
            models.Index(fields=["status", "received_at"], name="wecom_cb_status"),
        ]

    def __str__(self) -> str:
        return f"{self.event or '?'}/{self.change_type or '-'} {self.received_at:%Y-%m-%d %H:%M}"
