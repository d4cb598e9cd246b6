from django.contrib import admin

from wecom.models import Callback


@admin.register(Callback)
class CallbackAdmin(admin.ModelAdmin):
    list_display = ("received_at", "event", "change_type", "external_user_id", "status")
    list_filter = ("status", "event", "change_type")
    search_fields = ("external_user_id", "user_id", "nonce")
    readonly_fields = [f.name for f in Callback._meta.fields]
