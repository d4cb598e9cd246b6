import time

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from tagging import services
from tagging.models import TagRule


class Command(BaseCommand):
    help = _("Run tag rules now: every active rule, or one with --rule.")

    def add_arguments(self, parser):
        parser.add_argument("--rule", type=int, help=_("Only this rule id."))

    def handle(self, *args, rule=None, **options):
        started = time.monotonic()
        if rule is not None:
            found = TagRule.objects.filter(pk=rule).first()
            if found is None:
                raise CommandError(_("No tag rule with id %(id)d.") % {"id": rule})
            runs = [services.tag_rule_run(rule=found)]
        else:
            runs = services.tag_rules_run_due(force=True)
        for run in runs:
            if run is None:
                self.stdout.write(_("Rule %(id)d is running elsewhere; skipped.") % {"id": rule})
                continue
            self.stdout.write(_("%(rule)s: matched %(m)d, added %(a)d, removed %(r)d in "
                                "%(ms)d ms") % {"rule": run.rule.name, "m": run.matched,
                                                "a": run.added, "r": run.removed,
                                                "ms": run.duration_ms})
        self.stdout.write(_("Done in %(s).1f s.") % {"s": time.monotonic() - started})
