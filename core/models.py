"""Base model shared by every app."""

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils.translation import gettext_lazy as _


class TimeStampedModel(models.Model):
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        abstract = True


class AuditEntry(models.Model):
    """Who did what and when: one row per decision a person (or the system) made — a stage
    move, a tag change, an edit of an SOP, campaign, rule or model, a setting, an export, a
    personal-data request — written in the same transaction as the change (core.audit)."""

    id = models.BigAutoField(primary_key=True)
    at = models.DateTimeField(_("at"), auto_now_add=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("by"), null=True,
                              blank=True, on_delete=models.SET_NULL, related_name="+",
                              db_index=False)
    actor_name = models.CharField(_("by (name)"), max_length=150, blank=True)
    action = models.CharField(_("action"), max_length=48)
    summary = models.CharField(_("what"), max_length=500, blank=True)
    target_type = models.CharField(_("object type"), max_length=48, blank=True)
    target_id = models.CharField(_("object id"), max_length=64, blank=True)
    customer_id = models.BigIntegerField(_("customer id"), null=True, blank=True)
    data = models.JSONField(_("details"), default=dict, blank=True, encoder=DjangoJSONEncoder)

    class Meta:
        verbose_name = _("audit entry")
        verbose_name_plural = _("audit log")
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["-at"], name="core_audit_at"),
            models.Index(fields=["actor", "-at"], name="core_audit_actor"),
            models.Index(fields=["action", "-at"], name="core_audit_action"),
            models.Index(fields=["customer_id", "-at"], name="core_audit_customer"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_name or '-'} {self.action}"
