from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from tagging import segment_index


class Command(BaseCommand):
    help = _("Build the segment index now (segment previews read it; PostgreSQL only).")

    def handle(self, *args, **options):
        if not segment_index.available():
            raise CommandError(_("The segment index needs PostgreSQL and "
                                 "SEGMENT_INDEX_MINUTES above 0."))
        index = segment_index.build()
        if index is None:
            self.stdout.write(_("Another build is running; skipped."))
            return
        self.stdout.write(_("Segment index #%(id)d: %(n)d customers, %(mb).1f MB, built in "
                            "%(s).1f s.") % {"id": index.pk, "n": index.customers,
                                             "mb": index.size_bytes / 1e6, "s": index.seconds})
