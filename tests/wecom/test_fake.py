"""The fake WeCom server (wecom.fake) over real HTTP: tokens, paging, injected failures, corp
tags, mass sends, welcome codes, group chats, contact ways, and callbacks the app's crypto
accepts."""

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import pytest
import requests

from tests.wecom.conftest import AES_KEY, CORP_ID, TOKEN
from wecom.crypto import WXBizMsgCrypt
from wecom.fake import CallbackMismatch, FakeWeCom

SECRET = "s3cret"
ROOT = Path(__file__).resolve().parents[2]


class Api:
    """A WeCom caller: gets a token once and sends it with every call."""

    def __init__(self, fake: FakeWeCom) -> None:
        self.fake = fake
        self.session = requests.Session()
        self.session.trust_env = False
        self.token = ""

    def gettoken(self, corpid: str = CORP_ID, secret: str = SECRET) -> dict:
        return self.session.get(self.fake.base_url + "gettoken", timeout=10,
                                params={"corpid": corpid, "corpsecret": secret}).json()

    def _token(self) -> str:
        if not self.token:
            self.token = self.gettoken()["access_token"]
        return self.token

    def get(self, path: str, **params) -> dict:
        return self.session.get(self.fake.base_url + path, timeout=10,
                                params={**params, "access_token": self._token()}).json()

    def post(self, path: str, body: dict | None = None, *, data: bytes | None = None) -> dict:
        return self.session.post(self.fake.base_url + path, timeout=10, json=body, data=data,
                                 params={"access_token": self._token()}).json()


@pytest.fixture
def fake():
    with FakeWeCom(corp_id=CORP_ID, secret=SECRET, token=TOKEN,
                   encoding_aes_key=AES_KEY) as fake:
        yield fake


@pytest.fixture
def api(fake):
    return Api(fake)


@pytest.fixture
def receiver():
    """A stand-in for the app's callback endpoint: records POSTs and answers "success";
    answers URL verification with the decrypted echostr (or `wrong_echo` when set)."""
    crypt = WXBizMsgCrypt(token=TOKEN, encoding_aes_key=AES_KEY, receive_id=CORP_ID)
    state = SimpleNamespace(received=[], wrong_echo=None)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append((self.path, body.decode()))
            self._answer(b"success")

        def do_GET(self):
            query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            plain = crypt.verify_url(query["msg_signature"], query["timestamp"],
                                     query["nonce"], query["echostr"])
            self._answer((state.wrong_echo or plain).encode())

        def _answer(self, payload):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/wecom/callback/"
    yield state
    server.shutdown()
    server.server_close()


def pairs_of(entries):
    return [(e["external_contact"]["external_userid"], e["follow_info"]["userid"])
            for e in entries]


# --- tokens and the request pipeline ---------------------------------------------------------

def test_token_is_issued_expires_and_is_reissued(fake, api):
    assert api.gettoken(corpid="wwother")["errcode"] == 40013
    assert api.gettoken(secret="wrong")["errcode"] == 40001
    first = api.gettoken()
    assert first["errcode"] == 0 and first["expires_in"] == 7200
    assert api.gettoken()["access_token"] == first["access_token"]
    assert fake.tokens_issued == 1
    api.token = first["access_token"]
    assert api.get("externalcontact/get_follow_user_list")["errcode"] == 0

    api.token = "not-a-token"
    assert api.get("externalcontact/get_follow_user_list")["errcode"] == 40014

    fake.expire_token()
    api.token = first["access_token"]
    answer = api.get("externalcontact/get_follow_user_list")
    assert answer == {"errcode": 42001, "errmsg": "access_token expired"}
    second = api.gettoken()
    assert second["access_token"] != first["access_token"] and fake.tokens_issued == 2
    api.token = second["access_token"]
    assert api.get("externalcontact/get_follow_user_list")["errcode"] == 0


def test_unknown_api_and_malformed_json(api):
    assert api.get("externalcontact/nope") == {"errcode": 40058, "errmsg": "unknown api"}
    assert api.post("externalcontact/batch/get_by_user", data=b"{not json")["errcode"] == 47001


def test_fail_next_answers_the_injected_error_before_anything_else(fake, api):
    fake.add_staff("zhangsan")
    fake.fail_next("externalcontact/batch/get_by_user", errcode=45009, times=2)
    body = {"userid_list": ["zhangsan"]}
    api.token = "garbage"
    assert api.post("externalcontact/batch/get_by_user", body) == {
        "errcode": 45009, "errmsg": "api freq out of limit"}
    api.token = ""
    assert api.post("externalcontact/batch/get_by_user", body)["errcode"] == 45009
    assert api.post("externalcontact/batch/get_by_user", body)["errcode"] == 0
    assert [c[0] for c in fake.calls].count("externalcontact/batch/get_by_user") == 3
    assert fake.calls[-1][2] == body


# --- contacts --------------------------------------------------------------------------------

def test_batch_get_by_user_pages_cover_every_pair_exactly_once(fake, api):
    fake.generate(contacts=500, staff=4, groups=0, tags=6, seed=3)
    expected = {(ext, userid) for ext, contact in fake.contacts.items()
                for userid in contact["follow"]}
    assert len(expected) > 500           # some customers follow two staff members
    users = api.get("externalcontact/get_follow_user_list")["follow_user"]
    seen, cursor = [], ""
    while True:
        page = api.post("externalcontact/batch/get_by_user",
                        {"userid_list": users, "cursor": cursor, "limit": 37})
        assert page["errcode"] == 0 and len(page["external_contact_list"]) <= 37
        seen += pairs_of(page["external_contact_list"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) and set(seen) == expected

    entry = api.post("externalcontact/batch/get_by_user",
                     {"userid_list": users[:1], "limit": 1})["external_contact_list"][0]
    assert set(entry["external_contact"]) == {"external_userid", "name", "avatar", "type",
                                              "gender", "unionid"}
    assert set(entry["follow_info"]) == {"userid", "remark", "description", "createtime",
                                         "tag_id", "remark_mobiles", "add_way", "state"}


def test_batch_get_by_user_refusals(fake, api):
    fake.generate(contacts=20, staff=2, groups=0, tags=0)
    users = list(fake.staff)

    def post(body):
        return api.post("externalcontact/batch/get_by_user", body)

    assert post({"userid_list": [f"u{i}" for i in range(101)]})["errcode"] == 40058
    assert post({"userid_list": users, "limit": 101})["errcode"] == 40058
    assert post({"userid_list": users, "cursor": "garbage!"})["errcode"] == 40056
    cursor = post({"userid_list": users, "limit": 5})["next_cursor"]
    assert post({"userid_list": users, "cursor": cursor})["errcode"] == 0
    assert post({"userid_list": users[:1], "cursor": cursor})["errcode"] == 40056
    assert post({"userid_list": ["nobody"]})["errcode"] == 60111
    fake.fail_user[users[1]] = 60111
    assert post({"userid_list": users})["errcode"] == 60111
    assert post({"userid_list": users[:1]})["errcode"] == 0


def test_generate_is_deterministic_and_builds_100k_contacts_quickly():
    first, second = FakeWeCom(), FakeWeCom()
    first.generate(contacts=300, seed=5)
    second.generate(contacts=300, seed=5)
    assert first.contacts == second.contacts and first.groups == second.groups

    big = FakeWeCom()
    started = time.monotonic()
    made = big.generate(contacts=100_000, staff=20, groups=10, tags=6, seed=1)
    assert time.monotonic() - started < 30
    assert made["contacts"] == len(big.contacts) == 100_000
    assert len(made["staff"]) == 20 and len(made["tags"]) == 6 and len(made["groups"]) == 10


def test_list_and_get_contact(fake, api):
    fake.add_staff("zhangsan", name="张三")
    group = fake.add_tag_group("会员等级", tags=["金卡", "银卡"])
    gold = group["tag"][0]["id"]
    fake.add_contact("wmABC", name="李四", gender=1, follow=[
        {"userid": "zhangsan", "createtime": 1700000000, "state": "spring", "tag_ids": [gold]}])
    assert api.get("externalcontact/list", userid="zhangsan")["external_userid"] == ["wmABC"]
    answer = api.get("externalcontact/get", external_userid="wmABC")
    assert answer["external_contact"]["name"] == "李四"
    follow = answer["follow_user"][0]
    assert (follow["userid"], follow["state"], follow["createtime"]) == (
        "zhangsan", "spring", 1700000000)
    assert follow["tags"] == [{"group_name": "会员等级", "tag_name": "金卡", "type": 1,
                               "tag_id": gold}]
    assert api.get("externalcontact/get", external_userid="wmNONE")["errcode"] == 84061
    fake.item_failures[("externalcontact/get", "wmABC")] = 45009
    assert api.get("externalcontact/get", external_userid="wmABC")["errcode"] == 45009


# --- corp tags -------------------------------------------------------------------------------

def test_corp_tags_add_edit_delete_and_mark(fake, api):
    fake.add_staff("zhangsan")
    group = fake.add_tag_group("会员等级", tags=["金卡", "银卡"], order=1)
    gid = group["group_id"]
    gold, silver = (t["id"] for t in group["tag"])
    assert gid.startswith("et") and gold.startswith("et") and gold != silver
    fake.add_contact("wmABC", name="李四", follow=[{"userid": "zhangsan", "tag_ids": [gold]}])

    added = api.post("externalcontact/add_corp_tag", {"group_id": gid, "tag": [{"name": "铜卡"}]})
    assert [t["name"] for t in added["tag_group"]["tag"]] == ["铜卡"]
    bronze = added["tag_group"]["tag"][0]["id"]
    assert api.post("externalcontact/add_corp_tag",
                    {"group_id": gid, "tag": [{"name": "金卡"}]})["errcode"] == 40071
    created = api.post("externalcontact/add_corp_tag",
                       {"group_name": "兴趣", "tag": [{"name": "护肤"}, {"name": "彩妆"}]})
    assert created["tag_group"]["group_name"] == "兴趣"
    skin = created["tag_group"]["tag"][0]["id"]

    assert api.post("externalcontact/edit_corp_tag", {"id": gold, "name": "黑金卡"})["errcode"] == 0
    assert api.post("externalcontact/edit_corp_tag", {"id": gid, "name": "等级"})["errcode"] == 0
    assert api.post("externalcontact/edit_corp_tag", {"id": "etNONE", "name": "x"})[
        "errcode"] == 40068

    mark = {"userid": "zhangsan", "external_userid": "wmABC"}
    assert api.post("externalcontact/mark_tag",
                    {**mark, "add_tag": [skin, bronze], "remove_tag": []})["errcode"] == 0
    assert api.post("externalcontact/mark_tag", {**mark, "add_tag": ["etNONE"]})[
        "errcode"] == 40068
    assert api.post("externalcontact/mark_tag", {
        "userid": "zhangsan", "external_userid": "wmOTHER", "add_tag": [skin]})["errcode"] == 84061
    tags = api.get("externalcontact/get", external_userid="wmABC")["follow_user"][0]["tags"]
    assert {(t["group_name"], t["tag_name"]) for t in tags} == {
        ("等级", "黑金卡"), ("等级", "铜卡"), ("兴趣", "护肤")}

    assert api.post("externalcontact/del_corp_tag", {"tag_id": [gold]})["errcode"] == 0
    assert api.post("externalcontact/del_corp_tag", {"tag_id": [gold]})["errcode"] == 40068
    assert api.post("externalcontact/mark_tag", {**mark, "remove_tag": [skin]})["errcode"] == 0
    for tag in (skin, created["tag_group"]["tag"][1]["id"]):
        assert api.post("externalcontact/del_corp_tag", {"tag_id": [tag]})["errcode"] == 0
    listing = api.post("externalcontact/get_corp_tag_list", {})["tag_group"]
    assert [(g["group_name"], [t["name"] for t in g["tag"]]) for g in listing] == [
        ("等级", ["银卡", "铜卡"])]       # 兴趣 went with its last tag
    assert listing[0]["deleted"] is False
    filtered = api.post("externalcontact/get_corp_tag_list", {"tag_id": [bronze, "etNONE"]})
    assert [[t["id"] for t in g["tag"]] for g in filtered["tag_group"]] == [[bronze]]
    batch = api.post("externalcontact/batch/get_by_user", {"userid_list": ["zhangsan"]})
    assert batch["external_contact_list"][0]["follow_info"]["tag_id"] == [bronze]


# --- mass sends ------------------------------------------------------------------------------

def test_add_msg_template_limits(fake, api):
    fake.add_staff("zhangsan")
    fake.add_contact("wmA", follow=[{"userid": "zhangsan"}])
    body = {"chat_type": "single", "sender": "zhangsan", "text": {"content": "hi"}}
    too_many = api.post("externalcontact/add_msg_template",
                        {**body, "external_userid": [f"wm{i}" for i in range(10_001)]})
    assert too_many["errcode"] == 40058 and "10000" in too_many["errmsg"]
    long_text = {**body, "external_userid": ["wmA"], "text": {"content": "字" * 1334}}
    assert api.post("externalcontact/add_msg_template", long_text)["errcode"] == 40058
    assert api.post("externalcontact/add_msg_template", {
        **body, "external_userid": ["wmA"], "text": {"content": "a" * 4000}})["errcode"] == 0
    no_sender = {k: v for k, v in body.items() if k != "sender"}
    assert api.post("externalcontact/add_msg_template",
                    {**no_sender, "external_userid": ["wmA"]})["errcode"] == 40058

    answer = api.post("externalcontact/add_msg_template",
                      {**body, "external_userid": ["wmA", "wmSTRANGER"]})
    assert answer["errcode"] == 0 and answer["fail_list"] == ["wmSTRANGER"]
    message = fake.messages[answer["msgid"]]
    assert message["tasks"] == {"zhangsan": 0}
    assert message["results"] == {("zhangsan", "wmA"): 0}


def test_confirm_marks_sent_not_a_contact_and_already_received_today(fake, api):
    now = 1_760_000_000          # 2025-10-09 16:53 in Shanghai
    fake.clock = lambda: now
    for userid in ("zhangsan", "lisi"):
        fake.add_staff(userid)
    for ext in ("wmA", "wmB", "wmC"):
        fake.add_contact(ext, follow=[{"userid": "zhangsan"}])
    fake.add_contact("wmC", follow=[{"userid": "lisi"}])

    def send(sender, recipients):
        answer = api.post("externalcontact/add_msg_template", {
            "sender": sender, "external_userid": recipients, "text": {"content": "上新"}})
        assert answer["errcode"] == 0
        return answer["msgid"]

    first = send("zhangsan", ["wmA", "wmB", "wmC"])
    fake.remove_follow("wmB", "zhangsan")         # the customer deleted zhangsan meanwhile
    tasks = api.post("externalcontact/get_groupmsg_task", {"msgid": first})["task_list"]
    assert tasks == [{"userid": "zhangsan", "status": 0}]
    fake.confirm(first)
    tasks = api.post("externalcontact/get_groupmsg_task", {"msgid": first})["task_list"]
    assert tasks == [{"userid": "zhangsan", "status": 2, "send_time": now}]

    results, cursor = [], ""
    while True:
        page = api.post("externalcontact/get_groupmsg_send_result",
                        {"msgid": first, "userid": "zhangsan", "limit": 2, "cursor": cursor})
        assert len(page["send_list"]) <= 2
        results += page["send_list"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert {r["external_userid"]: r["status"] for r in results} == {
        "wmA": 1, "wmB": 2, "wmC": 1}
    assert all(("send_time" in r) == (r["status"] == 1) for r in results)

    second = send("lisi", ["wmC"])
    fake.confirm(second, userid="lisi")
    assert fake.messages[second]["results"] == {("lisi", "wmC"): 3}

    fake.clock = lambda: now + 86400               # the next day in Shanghai
    assert api.get("externalcontact/get_follow_user_list")["errcode"] == 42001   # 2 h TTL
    api.token = ""
    third = send("lisi", ["wmC"])
    fake.confirm(third)
    assert fake.messages[third]["results"] == {("lisi", "wmC"): 1}
    assert api.post("externalcontact/get_groupmsg_task", {"msgid": "msgNONE"})["errcode"] != 0


def test_moments_and_app_messages(fake, api):
    fake.add_staff("zhangsan")
    job = api.post("externalcontact/add_moment_task", {
        "text": {"content": "新品"},
        "visible_range": {"sender_list": {"user_list": ["zhangsan", "ghost"]},
                          "external_contact_list": {"tag_list": ["etNONE"]}}})
    result = api.get("externalcontact/get_moment_task_result", jobid=job["jobid"])
    assert result["status"] == 3 and result["result"]["moment_id"].startswith("mom")
    assert result["result"]["invalid_sender_list"]["user_list"] == ["ghost"]
    assert result["result"]["invalid_external_contact_list"]["tag_list"] == ["etNONE"]
    assert job["jobid"] in fake.moments

    sent = api.post("message/send", {"touser": "zhangsan|ghost", "msgtype": "text",
                                     "agentid": 1000002, "text": {"content": "hi"}})
    assert sent["errcode"] == 0 and sent["invaliduser"] == "ghost"
    assert len(fake.app_messages) == 1


# --- welcome messages, callbacks -------------------------------------------------------------

def test_welcome_code_works_once_and_expires(fake, api, receiver):
    fake.add_staff("zhangsan")
    status, body, code = fake.contact_added(receiver.url, "zhangsan", "wmNEW", state="spring")
    assert (status, body) == (200, "success") and code
    assert fake.contacts["wmNEW"]["follow"]["zhangsan"]["state"] == "spring"
    welcome = {"welcome_code": code, "text": {"content": "欢迎"}}
    assert api.post("externalcontact/send_welcome_msg", welcome)["errcode"] == 0
    assert api.post("externalcontact/send_welcome_msg", welcome)["errcode"] == 41051
    assert fake.welcome_sent == [welcome]

    fake.welcome_ttl = 0.1
    _status, _body, late = fake.contact_added(receiver.url, "zhangsan", "wmLATE")
    time.sleep(0.2)
    assert api.post("externalcontact/send_welcome_msg",
                    {**welcome, "welcome_code": late})["errcode"] == 41096
    assert api.post("externalcontact/send_welcome_msg",
                    {**welcome, "welcome_code": "nope"})["errcode"] == 41096

    _status, _body, none = fake.contact_added(receiver.url, "zhangsan", "wmQUIET", welcome=False)
    assert none is None and "WelcomeCode" not in receiver.received[-1][1]


def test_fire_is_what_wxbizmsgcrypt_accepts(fake, receiver):
    status, body = fake.fire(receiver.url, {
        "Event": "change_external_chat", "ChatId": "wrCHAT1", "ChangeType": "update",
        "UpdateDetail": "add_member", "MemChangeCnt": 2, "MemChangeList": ["wmA", "wmB"]},
        timestamp=1_700_000_000, nonce="n-42")
    assert (status, body) == (200, "success")
    path, envelope = receiver.received[-1]
    query = {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
    assert (query["timestamp"], query["nonce"]) == ("1700000000", "n-42")
    root = ElementTree.fromstring(envelope)
    assert root.findtext("ToUserName") == CORP_ID and root.findtext("AgentID") == "1000002"
    crypt = WXBizMsgCrypt(token=TOKEN, encoding_aes_key=AES_KEY, receive_id=CORP_ID)
    xml = crypt.decrypt_message(query["msg_signature"], query["timestamp"], query["nonce"],
                                root.findtext("Encrypt"))
    assert xml.startswith(f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>"
                          "<FromUserName><![CDATA[sys]]></FromUserName><CreateTime>")
    assert ("<MemChangeList><Item><![CDATA[wmA]]></Item><Item><![CDATA[wmB]]></Item>"
            "</MemChangeList>") in xml
    event = ElementTree.fromstring(xml)
    assert (event.findtext("MsgType"), event.findtext("ChatId"), event.findtext("MemChangeCnt")
            ) == ("event", "wrCHAT1", "2")


def test_verify_url_checks_the_echo(fake, receiver):
    status, body = fake.verify_url(receiver.url)
    assert status == 200 and body.isdigit()
    receiver.wrong_echo = "something else"
    with pytest.raises(CallbackMismatch):
        fake.verify_url(receiver.url)


@pytest.mark.django_db(transaction=True)
def test_the_apps_callback_endpoint_accepts_the_fakes_callbacks(fake, live_server,
                                                                 wecom_settings, monkeypatch):
    from wecom import tasks
    from wecom.models import Callback

    monkeypatch.setattr(tasks.process_callback, "delay", lambda *args, **kwargs: None)
    url = f"{live_server.url}/wecom/callback/"
    status, _body = fake.verify_url(url)
    assert status == 200
    fake.add_staff("zhangsan")
    status, body, _code = fake.contact_added(url, "zhangsan", "wmFROMFAKE", state="spring")
    assert (status, body) == (200, "success")
    stored = Callback.objects.get(external_user_id="wmFROMFAKE")
    assert (stored.change_type, stored.user_id) == ("add_external_contact", "zhangsan")


# --- group chats and contact ways ------------------------------------------------------------

def test_groupchat_list_and_get(fake, api):
    fake.generate(contacts=50, staff=3, groups=12, tags=0)
    owner = next(iter(fake.staff))
    seen, cursor = [], ""
    while True:
        page = api.post("externalcontact/groupchat/list",
                        {"status_filter": 0, "cursor": cursor, "limit": 5})
        seen += [c["chat_id"] for c in page["group_chat_list"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(fake.groups)
    mine = api.post("externalcontact/groupchat/list",
                    {"owner_filter": {"userid_list": [owner]}, "limit": 100})["group_chat_list"]
    assert {c["chat_id"] for c in mine} == {
        c for c, chat in fake.groups.items() if chat["owner"] == owner}
    assert api.post("externalcontact/groupchat/list", {"limit": 0})["errcode"] == 40058

    fake.add_contact("wmABC", name="李四", follow=[{"userid": owner}])
    fake.add_group("wrCHAT1", name="VIP 群", owner=owner, members=["wmABC", owner],
                   create_time=1700000000)
    chat = api.post("externalcontact/groupchat/get",
                    {"chat_id": "wrCHAT1", "need_name": 1})["group_chat"]
    assert (chat["name"], chat["owner"], chat["create_time"]) == ("VIP 群", owner, 1700000000)
    assert [(m["userid"], m["type"], m["name"]) for m in chat["member_list"]] == [
        (owner, 1, fake.staff[owner]["name"]), ("wmABC", 2, "李四")]
    assert chat["member_list"][1]["invitor"] == {"userid": owner}
    assert api.post("externalcontact/groupchat/get", {"chat_id": "wrNONE"})["errcode"] == 90501


def test_contact_way_and_its_qr_code(fake, api):
    fake.add_staff("zhangsan")
    way = {"type": 1, "scene": 2, "remark": "门店", "skip_verify": True, "state": "store-qr",
           "user": ["zhangsan"]}
    assert api.post("externalcontact/add_contact_way", {**way, "state": "x" * 31})[
        "errcode"] == 40058
    assert api.post("externalcontact/add_contact_way", {**way, "user": ["ghost"]})[
        "errcode"] == 60111
    added = api.post("externalcontact/add_contact_way", way)
    config_id = added["config_id"]
    assert added["qr_code"] == f"{fake.root_url}fake/qr/{config_id}.png"
    png = requests.get(added["qr_code"], timeout=10)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert png.headers["Content-Type"] == "image/png"

    assert api.post("externalcontact/update_contact_way",
                    {"config_id": config_id, "remark": "新门店"})["errcode"] == 0
    got = api.post("externalcontact/get_contact_way", {"config_id": config_id})["contact_way"]
    assert (got["remark"], got["state"], got["qr_code"]) == ("新门店", "store-qr",
                                                             added["qr_code"])
    assert api.post("externalcontact/del_contact_way", {"config_id": config_id})["errcode"] == 0
    assert api.post("externalcontact/get_contact_way", {"config_id": config_id})[
        "errcode"] == 41044
    assert requests.get(added["qr_code"], timeout=10).status_code == 404
    mini = api.post("externalcontact/add_contact_way", {**way, "scene": 1})
    assert mini["errcode"] == 0 and "qr_code" not in mini


# --- command line ----------------------------------------------------------------------------

def test_the_command_line_serves_without_django():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    process = subprocess.Popen(
        [sys.executable, "-m", "wecom.fake", "--port", "0", "--contacts", "30", "--secret",
         "cli-secret"], cwd=ROOT, env={**env, "PYTHONIOENCODING": "utf-8"},
        stdout=subprocess.PIPE, encoding="utf-8")
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("export WECOM_ENCODING_AES_KEY="):
                break
        exports = dict(line.removeprefix("export ").strip().split("=", 1) for line in lines
                       if line.startswith("export "))
        base = exports["WECOM_API_BASE"]
        token = requests.get(f"{base}gettoken", timeout=10, params={
            "corpid": exports["WECOM_CORP_ID"], "corpsecret": "cli-secret"}).json()
        assert token["errcode"] == 0 and exports["WECOM_SECRET"] == "cli-secret"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
