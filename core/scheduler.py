"""Beat's scheduler: django-celery-beat's DatabaseScheduler, which first seeds the rows from
config/beat.py (core.services.periodic_tasks_sync) so that beat never starts on an empty or stale
table — on a fresh machine, or after a deploy that changed the defaults — while an admin's edits
of a schedule survive the restart."""

import logging

from django.db import DatabaseError
from django_celery_beat.schedulers import DatabaseScheduler

logger = logging.getLogger(__name__)


class SeedingDatabaseScheduler(DatabaseScheduler):
    def setup_schedule(self):
        from core.services import periodic_tasks_sync

        try:
            periodic_tasks_sync()
        except DatabaseError:
            # Beat still runs what the table holds; the next start tries again.
            logger.exception("core.periodic_tasks_sync_failed")
        super().setup_schedule()
