from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _

from campaigns import services


class Command(BaseCommand):
    help = _("Send every due message once (one dispatcher pass), after returning stuck ones.")

    def handle(self, *args, **options):
        swept = services.messages_sweep()
        result = services.messages_dispatch()
        self.stdout.write(_("Returned %(swept)d stuck messages to the queue.") % {"swept": swept})
        self.stdout.write(_("Claimed %(claimed)d, sent %(sent)d, retrying %(retried)d, failed "
                            "%(failed)d, held for quiet hours %(held)d, skipped %(skipped)s in "
                            "%(ms)d ms.") % {**result.as_dict(),
                                             "skipped": dict(result.skipped) or 0,
                                             "ms": result.duration_ms})
