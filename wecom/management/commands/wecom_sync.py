import time

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from wecom import sync
from wecom.models import SyncRun


class Command(BaseCommand):
    help = _("Sync from WeCom now: follow users' contacts, customer groups and corp tags (all "
             "three without options), from WECOM_API_BASE.")

    def add_arguments(self, parser):
        parser.add_argument("--contacts", action="store_true", help=_("Contacts only."))
        parser.add_argument("--groups", action="store_true", help=_("Customer groups only."))
        parser.add_argument("--tags", action="store_true", help=_("Corp tags only (both ways)."))

    def handle(self, *args, **options):
        kinds = [k for k in (SyncRun.Kind.TAGS, SyncRun.Kind.CONTACTS, SyncRun.Kind.GROUPS)
                 if options[k]] or None
        try:
            runs = sync.sync_start(kinds=kinds, trigger="command", enqueue=False)
        except sync.SyncDisabled as exc:
            raise CommandError(str(exc)) from exc
        failed = False
        for run in runs:
            started = time.monotonic()
            run = sync.sync_run(run_id=run.pk)
            if run.status == SyncRun.Status.RUNNING and not run.error:
                message = _("%(kind)s: being run by a worker (run %(id)d).")
            elif run.status in (SyncRun.Status.RUNNING, SyncRun.Status.QUEUED):
                message = _("%(kind)s: interrupted (%(error)s); it resumes from its cursor "
                            "(run %(id)d).")
            elif run.status == SyncRun.Status.FAILED:
                failed = True
                message = _("%(kind)s: failed: %(error)s")
            else:
                message = _("%(kind)s: %(processed)d read, %(created)d created, %(updated)d "
                            "updated, %(failed)d failed in %(s).1f s.")
            self.stdout.write(message % {
                "kind": run.get_kind_display(), "id": run.pk, "error": run.error,
                "processed": run.processed, "created": run.created, "updated": run.updated,
                "failed": run.failed, "s": time.monotonic() - started})
            for failure in run.failures[:20]:
                self.stdout.write(f"  {failure['item']}: {failure['message']}")
        if failed:
            raise CommandError(_("A sync failed."))
