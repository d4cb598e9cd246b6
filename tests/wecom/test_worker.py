"""The whole WeCom flow end to end, over real HTTP both ways, with a real Celery worker: a
contact added through a channel QR code reaches the app as a signed callback, becomes a
customer in that channel with the code's tags and welcome message, enters `intro`, and the
intro SOP's first step goes out through WeCom as a mass send that the staff member confirms."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from django.apps import apps as django_apps

from campaigns.models import Message, Sop, SopStep
from crm.models import Customer
from crm.services import channel_save
from lifecycle.models import CustomerStage, Stage, StageModel
from lifecycle.tasks import evaluate_touched_customers
from tagging.models import Tag, TagGroup
from tests.campaigns.test_worker import _wait_for, _worker_env
from tests.wecom.conftest import AES_KEY, CORP_ID, SECRET, TOKEN
from wecom.accounts import staff_users_ensure
from wecom.mass_sends import mass_sends_poll
from wecom.models import Callback, ContactWay, MassSend

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_contact_added_by_qr_code_is_welcomed_and_gets_the_first_sop_step_through_wecom(
        tmp_path, fake, live_server, settings):
    from config.celery import app

    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(django_apps, None)
    assert StageModel.objects.filter(key="value").exists()
    intro = Stage.objects.get(model__key="value", key="intro")
    sop = Sop.objects.create(name="e2e 新客欢迎", model=intro.model, stage=intro)
    SopStep.objects.create(sop=sop, order=1, delay_minutes=0, channel="wecom",
                           category="service", template="新人礼包已到账（e2e）")
    fake.add_staff("zhangsan", name="张三")
    staff_users_ensure(["zhangsan"])
    tag = Tag.objects.create(group=TagGroup.objects.create(name="来源"), name="春季海报")
    channel = channel_save(channel=None, code="spring-poster", name="春季海报",
                           kind="qr_code")
    way = ContactWay.objects.create(channel=channel, staff=["zhangsan"], config_id="cfg-e2e",
                                    welcome_message="{{ name }}，欢迎关注！")
    way.tags.set([tag])
    fake.add_contact("wmE2E", name="林小姐", gender=2)
    app.control.purge()

    log_path = tmp_path / "worker.log"
    log = log_path.open("w")
    env = {**_worker_env(), "WECOM_CORP_ID": CORP_ID, "WECOM_SECRET": SECRET,
           "WECOM_TOKEN": TOKEN, "WECOM_ENCODING_AES_KEY": AES_KEY,
           "WECOM_API_BASE": fake.base_url, "WECOM_AGENT_ID": "1000002"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo",
         "--queues=default,dispatch", "--loglevel=INFO", "--without-heartbeat",
         "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        status, body, code = fake.contact_added(f"{live_server.url}/wecom/callback/",
                                                "zhangsan", "wmE2E", state="spring-poster")
        assert (status, body) == (200, "success") and code

        customer = _wait_for(lambda: Customer.objects.filter(
            external_id="wmE2E", name="林小姐").first(), worker, log_path)
        assert customer.channel_id == channel.pk and customer.owner.username == "zhangsan"
        _wait_for(lambda: fake.welcome_sent, worker, log_path)
        assert fake.welcome_sent[0]["welcome_code"] == code
        assert fake.welcome_sent[0]["text"]["content"] == "林小姐，欢迎关注！"
        assert list(customer.customer_tags.values_list("tag__name", flat=True)) == ["春季海报"]
        assert Callback.objects.get().status == "processed"

        evaluate_touched_customers.delay()
        _wait_for(lambda: CustomerStage.objects.filter(customer=customer,
                                                       stage=intro).exists(), worker, log_path)
        message = _wait_for(lambda: Message.objects.filter(
            customer=customer, sop_step__sop=sop, status="submitted").first(), worker, log_path)
        mass = MassSend.objects.get(msgid=message.provider_id)
        assert (mass.sender, mass.content) == ("zhangsan", "新人礼包已到账（e2e）")
        sent = fake.messages[mass.msgid]
        assert sent["external_userid"] == ["wmE2E"] and sent["sender"] == "zhangsan"

        fake.confirm(mass.msgid)              # 张三 taps "send" in the WeCom client
        assert mass_sends_poll() == {"sent": 1}
        message.refresh_from_db()
        assert message.status == "sent" and message.sent_at is not None
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        log.close()
    assert Message.objects.filter(customer=customer, sop_step__sop=sop).count() == 1
