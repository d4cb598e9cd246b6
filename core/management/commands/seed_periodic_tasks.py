"""`python manage.py seed_periodic_tasks`: beat's rows from config/beat.py, keeping admins'
edits."""

import time

from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _

from core.services import periodic_tasks_sync


class Command(BaseCommand):
    help = _("Create or update the periodic jobs beat runs (django-celery-beat) from "
             "config/beat.py. A schedule or enabled flag an admin changed is kept; jobs seeded "
             "earlier and no longer in the file are removed. Safe to run any time (deploys, "
             "scripts/demo; beat also does it when it starts).")

    def handle(self, *args, **options):
        started = time.monotonic()
        report = periodic_tasks_sync()
        self.stdout.write(_(
            "Periodic jobs: %(created)d created, %(updated)d updated, %(unchanged)d unchanged, "
            "%(customised)d keep an admin's change, %(removed)d removed (%(s).2f s)")
            % {**report.as_dict(), "s": time.monotonic() - started})
