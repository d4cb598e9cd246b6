"""`python manage.py seed_demo --customers N [--seed S] [--days D] [--reset]`."""

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _

from crm import demo


class Command(BaseCommand):
    help = _("Fill the database with believable demo customers, channels, groups, events and "
             "orders. Deterministic for a seed; adds nothing when demo data is already there.")

    def add_arguments(self, parser):
        parser.add_argument("--customers", type=int, default=1000,
                            help=_("How many customers to make (default 1000)."))
        parser.add_argument("--seed", type=int, default=1,
                            help=_("Random seed; the same seed gives the same data."))
        parser.add_argument("--days", type=int, default=365,
                            help=_("Length of the history in days (default 365); dormant customers "
                                   "need about 90 or more."))
        parser.add_argument("--reset", action="store_true",
                            help=_("Delete crm's data first (on PostgreSQL, TRUNCATE … CASCADE "
                                   "also empties other apps' rows about customers)."))
        parser.add_argument("--until", default=None,
                            help=_("End of the history, ISO 8601 (default: start of today)."))
        parser.add_argument("--workers", type=int, default=None,
                            help=_("Loader processes on PostgreSQL (default: 2 for 50k "
                                   "customers or more, else 1)."))

    def handle(self, *args, customers, seed, days, reset, until, workers, **options):
        if customers < 1:
            raise CommandError(_("--customers must be at least 1."))
        if days < 1:
            raise CommandError(_("--days must be at least 1."))
        now = None
        if until:
            now = parse_datetime(until)
            if now is None:
                raise CommandError(_("--until: not an ISO 8601 date-time: %(value)r")
                                   % {"value": until})
            if timezone.is_naive(now):
                now = timezone.make_aware(now)
            if now > timezone.now():
                raise CommandError(_("--until must not be in the future."))
        verbosity = self.verbosity = options["verbosity"]
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if verbosity < 2 and done < total:
                share = done / total
                if share - last[0] < 0.1:
                    return
                last[0] = share
            self.stdout.write(_("  … %(done)d of %(total)d customers") % {
                "done": done, "total": total})

        report = demo.seed_demo(customers=customers, seed=seed, days=days, reset=reset,
                                now=now, workers=workers,
                                progress=progress if verbosity else None)
        self._print(report, customers, seed, days)

    def _print(self, report: demo.SeedReport, customers: int, seed: int, days: int) -> None:
        out = self.stdout.write
        if report.truncated:
            out(_("Reset also emptied: %(tables)s") % {"tables": ", ".join(report.truncated)})
        if report.skipped:
            out(self.style.WARNING(_(
                "Demo data is already there (%(n)d customers): nothing added. Run with --reset "
                "to start over.") % {"n": report.existing_customers}))
        else:
            out(self.style.SUCCESS(_(
                "Seeded %(n)d customers (seed %(seed)d, %(days)d days of history) in %(s).1f s "
                "with %(w)d process(es).") % {"n": customers, "seed": seed, "days": days,
                                               "s": report.seconds, "w": report.workers}))
            for name in ("Customer", "Event", "Order", "OrderItem", "GroupMembership", "Group",
                         "Channel"):
                out(_("  %(model)-16s %(n)10d") % {"model": name,
                                                    "n": report.created.get(name, 0)})
            mix = ", ".join(f"{kind} {report.personas.get(kind, 0)}"
                            for kind in demo.PERSONA_KINDS)
            out(_("  personas: %(mix)s") % {"mix": mix})
            out(_("  time: set-up %(setup).1f s, load %(load).1f s, indexes %(indexes).1f s "
                  "(%(n)d rebuilt), commit %(commit).1f s, analyze %(analyze).1f s") % {
                **{k: report.timings.get(k, 0.0) for k in ("setup", "load", "indexes", "commit",
                                                           "analyze")},
                "n": len(report.rebuilt)})
            if self.verbosity > 1:
                out(_("    load: waited %(wait).1f s for generated rows, wrote for %(write).1f s")
                    % {"wait": report.timings.get("wait", 0.0),
                       "write": report.timings.get("write", 0.0)})
                for sql, seconds in report.rebuilt:
                    out(f"    {seconds:6.1f} s  {sql}")
        out(_("Logins:"))
        for login in report.logins:
            password = demo.DEMO_PASSWORD if login.created else _("(existing user, unchanged)")
            out(f"  {login.username:<12} {login.role:<9} {password}")
