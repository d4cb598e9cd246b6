import time

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from lifecycle import services
from lifecycle.models import StageModel


class Command(BaseCommand):
    help = _("Evaluate stage models now: every active model, or one with --model KEY.")

    def add_arguments(self, parser):
        parser.add_argument("--model", help=_("Only this model key."))

    def handle(self, *args, model=None, **options):
        started = time.monotonic()
        if model:
            found = StageModel.objects.filter(key=model).first()
            if found is None:
                raise CommandError(_("No stage model with key %(key)r.") % {"key": model})
            if not found.active:
                raise CommandError(_("Stage model %(key)r is inactive; activate it first.")
                                   % {"key": model})
        results = services.stage_models_evaluate(keys=[model] if model else None)
        for result in results:
            self.stdout.write(_("%(model)s: %(n)d customers moved in %(ms)d ms")
                              % {"model": result.model, "n": result.changed,
                                 "ms": result.duration_ms})
            for move in result.as_dict()["moves"]:
                self.stdout.write(f"  {move['from'] or '∅'} → {move['to']}: {move['count']}")
        self.stdout.write(_("Done in %(s).1f s.") % {"s": time.monotonic() - started})
