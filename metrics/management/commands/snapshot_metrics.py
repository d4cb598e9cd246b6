"""`python manage.py snapshot_metrics [--date YYYY-MM-DD | --start YYYY-MM-DD --end YYYY-MM-DD]`
(docs/METRICS.md, "Snapshots")."""

import time
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_date
from django.utils.translation import gettext as _

from metrics import services
from metrics.periods import local_today


def _date(value: str, option: str):
    try:
        parsed = parse_date(value)
    except ValueError:
        parsed = None
    if parsed is None:
        raise CommandError(_("%(option)s: not a date (YYYY-MM-DD): %(value)r")
                           % {"option": option, "value": value})
    return parsed


class Command(BaseCommand):
    help = _("Store the daily metric snapshot of a day (default: yesterday) or of every day of "
             "a range (backfill), replacing what was stored, then refresh the cohort table and "
             "the stored facts (stage spells, channel cells, customer bitmaps).")

    def add_arguments(self, parser):
        parser.add_argument("--date", help=_("The day to snapshot (YYYY-MM-DD)."))
        parser.add_argument("--start", help=_("First day of a backfill range (YYYY-MM-DD)."))
        parser.add_argument("--end", help=_("Last day of a backfill range (default: yesterday)."))
        parser.add_argument("--no-cohorts", action="store_true",
                            help=_("Do not refresh the cohort table."))
        parser.add_argument("--no-facts", "--no-range-facts", action="store_true",
                            dest="no_facts",
                            help=_("Do not refresh the stored facts (stage spells, channel "
                                   "cells, customer bitmaps)."))

    def handle(self, *args, date=None, start=None, end=None, no_cohorts=False,
               no_facts=False, **options):
        started = time.monotonic()
        today = local_today()
        first = last = today - timedelta(days=1)
        if date and (start or end):
            raise CommandError(_("Give either --date or --start/--end, not both."))
        if date:
            first = last = _date(date, "--date")
        elif start or end:
            if not start:
                raise CommandError(_("--start: required with --end."))
            first = _date(start, "--start")
            last = _date(end, "--end") if end else last
            if last < first:
                raise CommandError(_("--end: must not be before --start."))
        if last > today:
            raise CommandError(_("Cannot snapshot a day in the future (%(day)s); today is "
                                 "%(today)s.") % {"day": last, "today": today})

        def report(result):
            self.stdout.write(_("%(day)s: %(stages)d stage counts, %(transitions)d transition "
                                "counts, %(activity)d activity rows in %(ms)d ms")
                              % {"day": result.date.isoformat(), "stages": result.stage_counts,
                                 "transitions": result.transition_counts,
                                 "activity": result.activity, "ms": result.duration_ms})

        results = services.snapshot_metrics_range(start=first, end=last, progress=report)
        if not no_cohorts:
            cohorts = services.cohorts_refresh(today=today)
            self.stdout.write(_("Cohort table: %(cells)d cells of %(cohorts)d join months "
                                "through %(through)s in %(ms)d ms")
                              % {"cells": cohorts.cells, "cohorts": len(cohorts.cohorts),
                                 "through": cohorts.through.strftime("%Y-%m"),
                                 "ms": cohorts.duration_ms})
        if not no_facts:
            facts = services.facts_refresh(today=today)
            if facts.as_of is not None:
                how = (_("rebuilt") if facts.spells_rebuilt
                       else _("updated for %(movers)d customers who moved")
                       % {"movers": facts.spell_movers or 0})
                self.stdout.write(_("Stage spells (%(how)s): %(spells)d spells, %(cells)d "
                                    "cells in %(ms)d ms; channel cells: %(joiners)d joiners, "
                                    "%(channel_cells)d cells in %(channel_ms)d ms")
                                  % {"how": how, "spells": facts.spells,
                                     "cells": facts.spell_cells, "ms": facts.spells_ms,
                                     "joiners": facts.joiners,
                                     "channel_cells": facts.channel_cells,
                                     "channel_ms": facts.channels_ms})
            done = services.bitmaps_refresh(today=today, rebuild=(first, last))
            if done.last_day is not None:
                self.stdout.write(_("Customer bitmaps: %(first)s … %(last)s, %(days)d day(s) "
                                    "built, %(repaired)d rebuilt, %(blocks)d blocks, "
                                    "%(customers)d customer ids in %(ms)d ms")
                                  % {"first": done.first_day.isoformat(),
                                     "last": done.last_day.isoformat(),
                                     "days": done.days_built, "repaired": done.days_repaired,
                                     "blocks": done.blocks_built,
                                     "customers": done.customers, "ms": done.duration_ms})
        self.stdout.write(_("Snapshotted %(days)d day(s), %(rows)d rows, in %(s).1f s.")
                          % {"days": len(results), "rows": sum(r.rows for r in results),
                             "s": time.monotonic() - started})

