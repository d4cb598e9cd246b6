from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from core.exceptions import ApplicationError
from crm.models import Channel
from tagging.models import Tag
from wecom import contact_ways
from wecom.models import ContactWay


class Command(BaseCommand):
    help = _("Create or update a channel QR code (渠道活码) in WeCom, as the QR codes page does; "
             "the channel is created when its code is new.")

    def add_arguments(self, parser):
        parser.add_argument("--channel", required=True, help=_("The channel's code (its state)."))
        parser.add_argument("--name", help=_("The channel's name when it is new."))
        parser.add_argument("--staff", required=True,
                            help=_("WeCom UserIDs, comma-separated."))
        parser.add_argument("--tag", action="append", default=[],
                            help=_("A tag given on joining, by name (repeatable)."))
        parser.add_argument("--welcome", default="", help=_("The welcome message template."))

    def handle(self, *args, channel, name, staff, tag, welcome, **options):
        try:
            found = Channel.objects.filter(code=channel).first()
            tags = list(Tag.objects.filter(name__in=tag))
            missing = set(tag) - {t.name for t in tags}
            if missing:
                raise CommandError(_("Unknown tags: %(names)s") % {
                    "names": ", ".join(sorted(missing))})
            way = contact_ways.contact_way_save(
                way=ContactWay.objects.filter(channel=found).first() if found else None,
                channel=found, new_channel=None if found else (channel, name or channel),
                staff=staff.split(","), tags=tags, welcome_message=welcome)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(_("QR code of %(channel)s: WeCom config %(config)s, image %(size)d "
                            "bytes.") % {"channel": way.channel, "config": way.config_id,
                                         "size": len(way.qr_code or b"")})
