"""`manage.py wecom_qr_code`: the QR codes page's service from the command line."""

import pytest
from django.core.management import call_command

from crm.models import Channel
from wecom.accounts import staff_users_ensure
from wecom.models import ContactWay

pytestmark = pytest.mark.django_db


def test_the_command_makes_a_channel_and_its_qr_code_then_updates_it(fake):
    fake.add_staff("zhangsan")
    staff_users_ensure(["zhangsan"])
    call_command("wecom_qr_code", "--channel", "poster", "--name", "海报", "--staff", "zhangsan")
    way = ContactWay.objects.select_related("channel").get()
    assert (way.channel.code, way.channel.name, way.channel.kind) == ("poster", "海报", "qr_code")
    call_command("wecom_qr_code", "--channel", "poster", "--staff", "zhangsan",
                 "--welcome", "{{ name }}，你好")
    assert ContactWay.objects.get().welcome_message == "{{ name }}，你好"
    assert Channel.objects.count() == 1
