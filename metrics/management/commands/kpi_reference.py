"""Print the KPI table of docs/METRICS.md from the registry (metrics.kpis), or --write it."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import translation
from django.utils.translation import gettext as _

from metrics import kpis

START, END = "<!-- kpis: start (python manage.py kpi_reference --write) -->", "<!-- kpis: end -->"


def document() -> Path:
    return Path(settings.BASE_DIR) / "docs" / "METRICS.md"


def current_table() -> str:
    """The table as docs/METRICS.md holds it now."""
    text = document().read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise CommandError(_("docs/METRICS.md has no KPI table markers."))
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


class Command(BaseCommand):
    help = _("Print the KPI table of docs/METRICS.md from the KPI registry, or write it there.")

    def add_arguments(self, parser):
        parser.add_argument("--write", action="store_true",
                            help=_("Replace the table in docs/METRICS.md."))

    def handle(self, *args, write=False, **options):
        with translation.override("en"):
            table = kpis.reference()
        if not write:
            self.stdout.write(table, ending="")
            return
        current_table()
        text = document().read_text(encoding="utf-8")
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        document().write_text(f"{before}{START}\n{table}{END}{after}", encoding="utf-8")
        self.stdout.write(_("docs/METRICS.md: KPI table written."))
