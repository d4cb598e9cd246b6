"""The permission to export full phone numbers (without it exports mask them), given to the
admin role's group as core's 0001_roles made the groups."""

from django.db import migrations

CODENAME = "export_full_phone"
NAME = "Can export full phone numbers"


def grant_to_admins(apps, schema_editor):
    # Django creates a model's permissions after `migrate` (post_migrate); this migration needs
    # the row now, so it makes it the way that signal would and the signal then finds it.
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    content_type, _created = ContentType.objects.get_or_create(app_label="crm", model="customer")
    permission, _created = Permission.objects.get_or_create(
        content_type=content_type, codename=CODENAME, defaults={"name": NAME})
    Group.objects.get_or_create(name="admin")[0].permissions.add(permission)


def revoke_from_admins(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.permissions.through.objects.filter(
        group__name="admin", permission__content_type__app_label="crm",
        permission__codename=CODENAME).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("crm", "0017_erased_identity"),
        ("core", "0001_roles"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="customer",
            options={"ordering": ["-joined_at", "-id"],
                     "permissions": [("export_full_phone", "Can export full phone numbers")],
                     "verbose_name": "customer", "verbose_name_plural": "customers"},
        ),
        migrations.RunPython(grant_to_admins, revoke_from_admins),
    ]
