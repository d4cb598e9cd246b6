import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from core import backups
from core.exceptions import ApplicationError


class Command(BaseCommand):
    help = _("Restore a backup into a fresh scratch database and check that every table has "
             "the rows counted when the backup was taken; the scratch database is dropped.")

    def add_arguments(self, parser):
        parser.add_argument("backup", type=Path, help=_("A file written by backup_database."))
        parser.add_argument("--keep", action="store_true",
                            help=_("Keep the scratch database to look at."))

    def handle(self, *args, backup, keep=False, **options):
        started = time.monotonic()
        try:
            result = backups.restore_check(path=backup, keep=keep)
        except (ApplicationError, FileNotFoundError) as exc:
            raise CommandError(getattr(exc, "message", str(exc))) from exc
        if result["differences"]:
            for table, counts in sorted(result["differences"].items()):
                self.stderr.write(f"{table}: {counts['counted']} counted, "
                                  f"{counts['restored']} restored")
            raise CommandError(_("The restored copy differs from the backup's counts."))
        message = (_("Restored %(rows)d rows of %(tables)d tables from %(file)s: every count "
                     "matches (%(s).1f s).") if result["compared"] else
                   _("Restored %(rows)d rows of %(tables)d tables from %(file)s: every table is "
                     "there; no counts were recorded with this dump (%(s).1f s)."))
        self.stdout.write(message % {
            "rows": result["rows"], "tables": result["tables"], "file": result["file"],
            "s": time.monotonic() - started})
