"""Admin pieces every app's admin shares."""

from django.contrib import admin

from core import access


class CustomerScopedAdmin(admin.ModelAdmin):
    """Admin of rows that belong to a customer, scoped like the API: an operator with
    admin-site access sees only their own customers' rows. `owner_field` is the path to the
    owning user; counts are left out, as they cost a scan at a million rows."""

    owner_field = "customer__owner"
    show_full_result_count = False
    list_per_page = 50

    def get_queryset(self, request):
        return access.scope_customers(super().get_queryset(request), request.user,
                                      owner_field=self.owner_field)
