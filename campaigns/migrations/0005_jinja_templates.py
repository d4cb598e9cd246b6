"""Message templates move from Django's template engine to Jinja2's sandbox (campaigns.templates):
every stored SOP step and campaign template is rewritten into the new syntax. One that uses
something with no equivalent ({% lorem %}, {% cycle %}, a filter outside the list) keeps its text
and stops with the reason in `paused_reason` — a step paused, a campaign not yet started back to
draft (saving it with a template that compiles clears the reason) — so nothing is sent from a
template that no longer renders."""

from django.db import migrations
from django.utils.translation import gettext as _

UNSTARTED = ("draft", "scheduled")


def _reason(error) -> str:
    return (_("Message templates use Jinja2's syntax now and this one could not be rewritten "
              "(%(error)s): edit it, then resume.") % {"error": error})[:300]


def rewrite(apps, schema_editor):
    from campaigns.templates import ConversionError, from_django_syntax

    for model_name in ("SopStep", "Campaign"):
        model = apps.get_model("campaigns", model_name)
        for row in model.objects.all().iterator():
            try:
                row.template = from_django_syntax(row.template)
            except ConversionError as exc:
                if model_name == "SopStep":
                    row.paused, row.paused_reason = True, _reason(exc)
                elif row.status in UNSTARTED:
                    row.status, row.paused_reason = "draft", _reason(exc)
            row.save(update_fields=["template", "paused", "paused_reason"]
                     + (["status"] if model_name == "Campaign" else []))


class Migration(migrations.Migration):

    dependencies = [
        ("campaigns", "0004_render_at_send"),
    ]

    operations = [
        migrations.RunPython(rewrite, migrations.RunPython.noop, elidable=False),
    ]
