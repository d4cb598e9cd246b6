"""`python manage.py analyze_database`: refresh the query planner's statistics now."""

import time

from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _

from core.db import planner_statistics_refresh


class Command(BaseCommand):
    help = _("Refresh the query planner's statistics (ANALYZE) — after a bulk load such as "
             "seed_demo. The embedded SQLite default also does it hourly from beat.")

    def handle(self, *args, **options):
        started = time.monotonic()
        ran = planner_statistics_refresh()
        self.stdout.write(_("%(what)s in %(s).1f s") % {"what": ran,
                                                       "s": time.monotonic() - started})
