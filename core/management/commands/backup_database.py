import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from core import backups
from core.exceptions import ApplicationError


class Command(BaseCommand):
    help = _("Back the database up (PostgreSQL: pg_dump of one snapshot; SQLite: its backup "
             "API) with every table's row count beside it, under DATA_DIR/backups/.")

    def add_arguments(self, parser):
        parser.add_argument("--output", type=Path, help=_("Where to write the backup."))

    def handle(self, *args, output=None, **options):
        started = time.monotonic()
        try:
            meta = backups.backup(output=output)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(_("Backed up %(rows)d rows of %(tables)d tables to %(file)s "
                            "(%(mb).1f MB) in %(s).1f s.") % {
            "rows": sum(meta["counts"].values()), "tables": len(meta["counts"]),
            "file": meta["file"], "mb": meta["bytes"] / 1e6, "s": time.monotonic() - started})
