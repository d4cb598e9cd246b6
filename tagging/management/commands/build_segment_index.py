from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from tagging import segment_index


class Command(BaseCommand):
    help = _("Build the segment index now (segment previews read it; PostgreSQL only): an "
             "update of the customers changed since the last full build, or a full build "
             "when one is due or with --full.")

    def add_arguments(self, parser):
        parser.add_argument("--full", action="store_true",
                            help=_("Read every customer again, not only those changed."))

    def handle(self, *args, full=False, **options):
        if not segment_index.available():
            raise CommandError(_("The segment index needs PostgreSQL and "
                                 "SEGMENT_INDEX_MINUTES above 0."))
        index = segment_index.build(full=full)
        if index is None:
            self.stdout.write(_("Another build is running; skipped."))
            return
        if index.base_id is None:
            self.stdout.write(_("Segment index #%(id)d (full): %(n)d customers, %(mb).1f MB, "
                                "built in %(s).1f s.") % {
                "id": index.pk, "n": index.customers, "mb": index.size_bytes / 1e6,
                "s": index.seconds})
        else:
            self.stdout.write(_("Segment index #%(id)d (update of #%(base)d): %(n)d customers "
                                "read again, %(mb).1f MB, built in %(s).1f s.") % {
                "id": index.pk, "base": index.base_id, "n": index.changed,
                "mb": index.size_bytes / 1e6, "s": index.seconds})
