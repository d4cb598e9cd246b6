import time

from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _

from crm import services


class Command(BaseCommand):
    help = _("Recompute customer aggregates (orders, spend, last activity) and per-type event "
             "counts from the facts.")

    def add_arguments(self, parser):
        parser.add_argument("--customer", type=int, action="append", dest="customers",
                            help=_("Only this customer id (repeatable)."))

    def handle(self, *args, customers=None, **options):
        started = time.monotonic()
        updated, counts = services.customer_facts_repair(customer_ids=customers)
        self.stdout.write(_("Recomputed aggregates of %(n)d customers and %(c)d event counts in "
                            "%(s).1f s.") % {"n": updated, "c": counts,
                                             "s": time.monotonic() - started})
