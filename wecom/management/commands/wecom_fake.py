from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _

from wecom import fake


class Command(BaseCommand):
    help = _("Serve a fake WeCom API with generated customers, for the demo (the same as "
             "python -m wecom.fake). Runs until Ctrl-C.")
    requires_system_checks = []

    def add_arguments(self, parser):
        fake.add_arguments(parser)

    def handle(self, *args, **options):
        fake.run(options)
