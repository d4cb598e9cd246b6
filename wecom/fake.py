"""A local fake of WeCom's 客户联系 server, for the tests and the demo.

`FakeWeCom` keeps a corp's staff, customers, corp tags, group chats and mass sends in memory,
answers the `/cgi-bin/` API over real HTTP (a ThreadingHTTPServer in a daemon thread) and plays
WeCom's side of the callbacks: encrypted, signed events POSTed to the app. It needs no Django:
`python -m wecom.fake --help` (or `manage.py wecom_fake`) serves generated data for a demo.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import os
import random
import secrets
import shlex
import sys
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.error import HTTPError
from urllib.parse import parse_qs, urlencode, urlsplit
from urllib.request import ProxyHandler, Request, build_opener

import segno

from wecom.crypto import WXBizMsgCrypt

# Tencent's sample corp (callback/Sample.py of sbzhu/weworkapi_python).
SAMPLE_CORP_ID = "ww1436e0e65a779aee"
SAMPLE_TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"
SAMPLE_AES_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
SAMPLE_SECRET = "fake-secret"
SAMPLE_AGENT_ID = "1000002"

SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")    # no daylight saving since 1991
TOKEN_TTL = 7200
WELCOME_TTL = 20.0
MAX_MASS_RECIPIENTS = 10_000
MAX_CONTENT_BYTES = 4000
MAX_ATTACHMENTS = 9
MAX_STATE_CHARS = 30
SNAPSHOTS_KEPT = 16       # batch/get_by_user listings a cursor can still point into

ERRMSG = {
    -1: "system busy",
    40001: "invalid credential",
    40013: "invalid corpid",
    40014: "invalid access_token",
    40056: "invalid cursor",
    40058: "invalid parameter",
    40068: "invalid tagid",
    40071: "UserTag Name Already Exist",
    40088: "invalid jobid",
    41001: "access_token missing",
    41002: "corpid missing",
    41004: "corpsecret missing",
    41044: "invalid config_id",
    41051: "welcome code already used",
    41096: "invalid welcome_code",
    42001: "access_token expired",
    45009: "api freq out of limit",
    45033: "api concurrent out of limit",
    47001: "data format error",
    60111: "invalid userid",
    84061: "not external contact",
    90501: "not external group chat",
}

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘"
GIVEN_NAMES = ("伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "洋", "艳", "勇", "军", "杰", "娟",
               "涛", "明", "超", "秀英", "霞", "平", "刚", "桂英", "晓东", "雨欣", "子涵", "思远",
               "佳怡", "浩然", "梓萱", "一诺")
STAFF = (("zhangwei", "张伟"), ("wangfang", "王芳"), ("lina", "李娜"), ("liuyang", "刘洋"),
         ("chenjing", "陈静"), ("yangli", "杨丽"), ("zhaolei", "赵磊"), ("huangmin", "黄敏"),
         ("zhoujie", "周杰"), ("wuting", "吴婷"))
TAG_CATALOGUE = (("会员等级", ("金卡", "银卡", "普通会员")),
                 ("来源渠道", ("门店", "直播间", "朋友推荐")),
                 ("兴趣", ("护肤", "彩妆", "香氛", "母婴")),
                 ("消费能力", ("高", "中", "低")))
STATES = ("", "", "", "store-qr", "live-0518", "spring", "friend", "ad-douyin")
GROUP_NAMES = ("VIP 群", "新品试用群", "老客福利群", "门店会员群", "直播粉丝群", "宝妈交流群")
GENERATED_SINCE = 1_700_000_000


class ApiError(Exception):
    """An error WeCom answers with: `{"errcode": errcode, "errmsg": errmsg}`."""

    def __init__(self, errcode: int, errmsg: str | None = None) -> None:
        self.errcode = errcode
        self.errmsg = errmsg or ERRMSG.get(errcode, "error")
        super().__init__(f"{self.errcode} {self.errmsg}")


class CallbackMismatch(AssertionError):
    """The app answered URL verification with something other than the echostr."""


def _cursor(*parts: int) -> str:
    return base64.urlsafe_b64encode(":".join(map(str, parts)).encode()).decode().rstrip("=")


def _parse_cursor(cursor: Any, count: int) -> list[int]:
    if not isinstance(cursor, str):
        raise ApiError(40056)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        parts = [int(part) for part in raw.split(":")]
    except (binascii.Error, ValueError):
        raise ApiError(40056)
    if len(parts) != count or min(parts) < 0:
        raise ApiError(40056)
    return parts


def _page(items: list, cursor: Any, limit: int, kind: int) -> tuple[list, str]:
    """One page of `items` and the cursor of the next; `kind` tells lists' cursors apart."""
    offset = 0
    if cursor:
        cursor_kind, offset = _parse_cursor(cursor, 2)
        if cursor_kind != kind or offset > len(items):
            raise ApiError(40056)
    end = offset + limit
    return items[offset:end], _cursor(kind, end) if end < len(items) else ""


def _int(value: Any, default: int, low: int, high: int, name: str) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ApiError(40058, f"invalid {name}")
    if not low <= number <= high:
        raise ApiError(40058, f"{name} must be between {low} and {high}")
    return number


def _strings(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ApiError(40058, f"{name} must be a list of strings")
    return value


def _content(body: dict, *, required: bool = True) -> None:
    text = body.get("text") or {}
    content = text.get("content", "") if isinstance(text, dict) else ""
    if not isinstance(content, str):
        raise ApiError(40058, "text.content must be a string")
    if len(content.encode()) > MAX_CONTENT_BYTES:
        raise ApiError(40058, f"text.content exceeds {MAX_CONTENT_BYTES} bytes")
    attachments = body.get("attachments") or []
    if not isinstance(attachments, list) or len(attachments) > MAX_ATTACHMENTS:
        raise ApiError(40058, f"attachments must be a list of at most {MAX_ATTACHMENTS}")
    if required and not content and not attachments:
        raise ApiError(40058, "text.content or attachments is required")


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _xml_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "".join(f"<Item>{_xml_value(item)}</Item>" for item in value)
    if isinstance(value, dict):
        return "".join(f"<{key}>{_xml_value(item)}</{key}>" for key, item in value.items())
    return _cdata(str(value))


_OPENER = build_opener(ProxyHandler({}))     # the app is local: never through a proxy


def _http(url: str, *, data: bytes | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "text/xml; charset=utf-8"} if data is not None else {}
    request = Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with _OPENER.open(request, timeout=30) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def _with_query(url: str, params: dict) -> str:
    return url + ("&" if urlsplit(url).query else "?") + urlencode(params)


class FakeWeCom:
    """An in-memory WeCom corp behind a real HTTP server.

    State is built with `add_*` / `generate`; WeCom-side actions are `confirm` (a mass send
    confirmed in the client), `contact_added` / `contact_removed` (the callbacks) and `fire`.
    Injected failures: `fail_next(path, errcode, times)` answers the next calls of a path with an
    error before anything else is checked; `fail_user[userid] = errcode` fails every
    `batch/get_by_user` and `externalcontact/list` call naming that user;
    `item_failures[(path, id)] = errcode` fails every call of `externalcontact/get`,
    `externalcontact/mark_tag` (id: the external userid) or `groupchat/get` (id: the chat id)
    about that item, and puts that external userid in `add_msg_template`'s fail_list.

    Error codes where WeCom's own are unknown or overloaded here: 40056 a stale or garbage
    cursor (WeCom uses it for an invalid agentid, as message/send does here); 40058 an unknown
    api path, an unknown msgid and any out-of-range parameter; 41001 no access_token at all;
    41044 an unknown config_id; 41051 a welcome code used before; 41096 a welcome code unknown
    or older than `welcome_ttl` seconds (20); 40088 an unknown moment jobid; 41063 a reminder
    for a mass send every sender has sent.
    `clock` (default `time.time`) is the fake's idea of now, for tokens, codes and send dates.
    """

    def __init__(self, *, corp_id: str = SAMPLE_CORP_ID, secret: str = SAMPLE_SECRET,
                 token: str = SAMPLE_TOKEN, encoding_aes_key: str = SAMPLE_AES_KEY,
                 agent_id: str | int = SAMPLE_AGENT_ID) -> None:
        self.corp_id, self.secret = corp_id, secret
        self.token, self.encoding_aes_key = token, encoding_aes_key
        self.agent_id = str(agent_id)
        self.clock: Callable[[], float] = time.time
        self.welcome_ttl = WELCOME_TTL
        self.log_requests = False
        self.base_url: str | None = None

        self.staff: dict[str, dict] = {}
        self.contacts: dict[str, dict] = {}         # external_userid -> contact + "follow"
        self.tag_groups: dict[str, dict] = {}       # group_id -> group + "tag_ids"
        self.tags: dict[str, dict] = {}             # tag_id -> tag + "group_id"
        self.groups: dict[str, dict] = {}           # chat_id -> group chat
        self.messages: dict[str, dict] = {}
        self.welcome_sent: list[dict] = []
        self.app_messages: list[dict] = []
        self.moments: dict[str, dict] = {}
        self.reminded: list[str] = []               # msgids remind_groupmsg_send was called for
        self.contact_ways: dict[str, dict] = {}

        self.calls: list[tuple[str, dict, Any]] = []
        self.tokens_issued = 0
        self.fail_user: dict[str, int] = {}
        self.item_failures: dict[tuple[str, str], int] = {}

        self._lock = threading.RLock()
        self._by_user: dict[str, dict[str, None]] = {}   # userid -> its contacts, in order
        self._failures: dict[str, list[list]] = {}
        self._access_token: str | None = None
        self._token_issued = 0.0
        self._expired_tokens: set[str] = set()
        self._snapshots: OrderedDict[int, tuple[tuple[str, ...], list[tuple[str, str]]]] = (
            OrderedDict())
        self._welcome_codes: dict[str, dict] = {}
        self._received_on: dict[str, date] = {}     # external_userid -> date of last mass send
        self._moment_ids: dict[str, str] = {}
        self._seq: dict[str, int] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: dict[str, tuple[Callable[[dict, dict], dict], bool]] = {
            "gettoken": (self._gettoken, False),
            "externalcontact/get_follow_user_list": (self._follow_user_list, False),
            "externalcontact/list": (self._contact_list, False),
            "externalcontact/get": (self._contact_get, False),
            "externalcontact/batch/get_by_user": (self._batch_get_by_user, True),
            "externalcontact/get_corp_tag_list": (self._corp_tag_list, True),
            "externalcontact/add_corp_tag": (self._add_corp_tag, True),
            "externalcontact/edit_corp_tag": (self._edit_corp_tag, True),
            "externalcontact/del_corp_tag": (self._del_corp_tag, True),
            "externalcontact/mark_tag": (self._mark_tag, True),
            "externalcontact/add_contact_way": (self._add_contact_way, True),
            "externalcontact/update_contact_way": (self._update_contact_way, True),
            "externalcontact/get_contact_way": (self._get_contact_way, True),
            "externalcontact/del_contact_way": (self._del_contact_way, True),
            "externalcontact/send_welcome_msg": (self._send_welcome_msg, True),
            "externalcontact/add_msg_template": (self._add_msg_template, True),
            "externalcontact/get_groupmsg_task": (self._groupmsg_task, True),
            "externalcontact/get_groupmsg_send_result": (self._groupmsg_send_result, True),
            "externalcontact/remind_groupmsg_send": (self._remind_groupmsg_send, True),
            "externalcontact/add_moment_task": (self._add_moment_task, True),
            "externalcontact/get_moment_task_result": (self._moment_task_result, False),
            "externalcontact/groupchat/list": (self._groupchat_list, True),
            "externalcontact/groupchat/get": (self._groupchat_get, True),
            "message/send": (self._message_send, True),
        }

    # --- server ------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in a daemon thread; the base URL ends in "/cgi-bin/"."""
        if self._server is not None:
            raise RuntimeError("the fake WeCom server is already running")
        handler = type("FakeWeComHandler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        self.base_url = f"http://{shown}:{self._server.server_port}/cgi-bin/"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,),
                                        name="fake-wecom", daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeWeCom:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        return (self.base_url or "http://127.0.0.1/cgi-bin/").removesuffix("cgi-bin/")

    # --- building state ------------------------------------------------------------------------

    def _next_id(self, prefix: str, width: int, taken: Iterable[str] = ()) -> str:
        while True:
            self._seq[prefix] = number = self._seq.get(prefix, 0) + 1
            candidate = f"{prefix}{number:0{width}d}"
            if candidate not in taken:
                return candidate

    def new_external_userid(self) -> str:
        with self._lock:
            return self._next_id("wmFake", 8, self.contacts)

    def add_staff(self, userid: str, *, name: str = "") -> dict:
        with self._lock:
            member = self.staff.setdefault(userid, {"userid": userid, "name": name or userid})
            if name:
                member["name"] = name
            self._by_user.setdefault(userid, {})
            return member

    def add_tag_group(self, name: str, *, tags: Iterable[str | dict] = (), order: int = 0,
                      group_id: str | None = None) -> dict:
        """Like add_corp_tag: a new group, or new tags in the group of that name. Returns the
        group as get_corp_tag_list shows it (all its tags)."""
        with self._lock:
            specs = [{"name": t} if isinstance(t, str) else t for t in tags]
            gid, _new = self._add_tags(group_id, name, order, specs, allow_empty=True)
            return self._render_group(gid)

    def _add_tags(self, group_id: str | None, group_name: str, order: int, specs: list[dict],
                  *, allow_empty: bool = False, created: int | None = None,
                  ) -> tuple[str, list[str]]:
        if not specs and not allow_empty:
            raise ApiError(40058, "tag is required")
        names = [spec.get("name") for spec in specs]
        if not all(isinstance(n, str) and n.strip() for n in names):
            raise ApiError(40058, "every tag needs a name")
        if len(set(names)) != len(names):
            raise ApiError(40071)
        now = int(self.clock()) if created is None else created
        if group_id:
            if group_id not in self.tag_groups:
                raise ApiError(40068)
            gid = group_id
        else:
            if not group_name:
                raise ApiError(40058, "group_id or group_name is required")
            gid = next((g for g, group in self.tag_groups.items()
                        if group["group_name"] == group_name), "")
            if not gid:
                gid = self._next_id("etFakeGrp", 4, self.tag_groups)
                self.tag_groups[gid] = {"group_id": gid, "group_name": group_name,
                                        "create_time": now, "order": int(order or 0),
                                        "tag_ids": []}
        group = self.tag_groups[gid]
        existing = {self.tags[t]["name"] for t in group["tag_ids"]}
        if existing & set(names):
            raise ApiError(40071)
        new = []
        for spec in specs:
            tid = self._next_id("etFakeTag", 5, self.tags)
            self.tags[tid] = {"id": tid, "name": spec["name"], "create_time": now,
                              "order": int(spec.get("order") or 0), "group_id": gid}
            group["tag_ids"].append(tid)
            new.append(tid)
        return gid, new

    def add_contact(self, external_userid: str, *, name: str | None = None,
                    gender: int | None = None, follow: Iterable[dict] = (),
                    unionid: str | None = None, avatar: str | None = None,
                    contact_type: int | None = None) -> dict:
        """A customer and who follows them (each follow's userid must be staff). Adding an
        existing contact changes the fields given and adds or replaces the follows given."""
        with self._lock:
            contact = self.contacts.get(external_userid)
            if contact is None:
                contact = self.contacts[external_userid] = {
                    "external_userid": external_userid, "name": "", "avatar": "", "type": 1,
                    "gender": 0, "unionid": "", "follow": {}}
            given = {"name": name, "avatar": avatar, "type": contact_type, "gender": gender,
                     "unionid": unionid}
            contact.update({key: value for key, value in given.items() if value is not None})
            for spec in follow:
                self._set_follow(contact, spec)
            return contact

    def _set_follow(self, contact: dict, spec: dict) -> None:
        userid = spec["userid"]
        if userid not in self.staff:
            raise ValueError(f"{userid!r} is not a staff member: add_staff() first")
        tag_ids = list(spec.get("tag_ids") or [])
        unknown = [t for t in tag_ids if t not in self.tags]
        if unknown:
            raise ValueError(f"unknown tag ids {unknown}")
        contact["follow"][userid] = {
            "userid": userid, "remark": spec.get("remark", ""),
            "description": spec.get("description", ""),
            "createtime": int(spec.get("createtime") or self.clock()), "tag_ids": tag_ids,
            "remark_mobiles": list(spec.get("remark_mobiles") or []),
            "add_way": spec.get("add_way", 1), "state": spec.get("state", ""),
        }
        self._by_user[userid][contact["external_userid"]] = None

    def remove_follow(self, external_userid: str, userid: str) -> None:
        """The relation ends (either side deleted the other); a contact nobody follows any
        longer is no contact of the corp."""
        with self._lock:
            contact = self.contacts[external_userid]
            contact["follow"].pop(userid, None)
            self._by_user.get(userid, {}).pop(external_userid, None)
            if not contact["follow"]:
                del self.contacts[external_userid]

    def add_group(self, chat_id: str, *, name: str = "", owner: str,
                  members: Iterable[str] = (), create_time: int | None = None,
                  notice: str = "", admins: Iterable[str] = ()) -> dict:
        """A customer group chat; member ids starting "wm"/"wo" are external (type 2)."""
        with self._lock:
            created = int(create_time if create_time is not None else self.clock())
            member_ids = list(dict.fromkeys([owner, *members]))
            member_list = []
            for userid in member_ids:
                external = userid.startswith(("wm", "wo"))
                person = (self.contacts if external else self.staff).get(userid, {})
                member = {"userid": userid, "type": 2 if external else 1, "join_time": created,
                          "join_scene": 1, "group_nickname": "", "name": person.get("name", "")}
                if userid != owner:
                    member["invitor"] = {"userid": owner}
                if external and person.get("unionid"):
                    member["unionid"] = person["unionid"]
                member_list.append(member)
            group = self.groups[chat_id] = {
                "chat_id": chat_id, "name": name, "owner": owner, "create_time": created,
                "notice": notice, "member_list": member_list,
                "admin_list": [{"userid": a} for a in admins], "status": 0}
            return group

    def generate(self, *, contacts: int = 1000, staff: int = 5, groups: int = 10,
                 tags: int = 6, seed: int = 1) -> dict:
        """Deterministic bulk data: `staff` members, `tags` tags (in groups of the catalogue),
        `contacts` customers (each followed by one member, some by two, with 0–2 tags and a
        channel state) and `groups` group chats. Returns the ids made (contacts: a count)."""
        rng = random.Random(seed)
        with self._lock:
            staff_ids = [self._generate_staff(i) for i in range(staff)] or list(self.staff)
            if contacts and not staff_ids:
                raise ValueError("contacts need at least one staff member")
            tag_ids = self._generate_tags(tags)
            external_ids = self._generate_contacts(rng, contacts, staff_ids, tag_ids)
            chat_ids = []
            for index in range(groups):
                owner = staff_ids[index % len(staff_ids)]
                size = min(len(external_ids), rng.randint(3, 40))
                others = [s for s in staff_ids if s != owner][:1]
                chat_id = self._next_id("wrFake", 6, self.groups)
                self.add_group(chat_id, owner=owner,
                               name=f"{GROUP_NAMES[index % len(GROUP_NAMES)]} {index + 1}",
                               members=[*others, *rng.sample(external_ids, size)],
                               create_time=GENERATED_SINCE + rng.randrange(365 * 86400))
                chat_ids.append(chat_id)
            return {"staff": staff_ids, "tags": tag_ids, "contacts": len(external_ids),
                    "groups": chat_ids}

    def _generate_staff(self, index: int) -> str:
        userid, name = STAFF[index] if index < len(STAFF) else (f"staff{index + 1:03d}",
                                                                 f"员工{index + 1}")
        if userid in self.staff:
            userid = self._next_id("staff", 3, self.staff)
        self.add_staff(userid, name=name)
        return userid

    def _generate_tags(self, count: int) -> list[str]:
        catalogue = [(group, name) for group, names in TAG_CATALOGUE for name in names]
        catalogue += [("其他", f"标签{n}") for n in range(1, count - len(catalogue) + 1)]
        made = []
        for group_name, tag_name in catalogue[:count]:
            existing = next((t for t, tag in self.tags.items() if tag["name"] == tag_name
                             and self.tag_groups[tag["group_id"]]["group_name"] == group_name),
                            None)
            if existing is None:
                _gid, (existing,) = self._add_tags(None, group_name, 0, [{"name": tag_name}],
                                                    created=GENERATED_SINCE)
            made.append(existing)
        return made

    def _generate_contacts(self, rng: random.Random, count: int, staff_ids: list[str],
                           tag_ids: list[str]) -> list[str]:
        made = []
        random_ = rng.random
        n_staff, n_tags = len(staff_ids), len(tag_ids)
        for _ in range(count):
            ext = self._next_id("wmFake", 8, self.contacts)
            first = staff_ids[int(random_() * n_staff)]
            followers = [first]
            if n_staff > 1 and random_() < 0.15:
                second = staff_ids[int(random_() * n_staff)]
                if second != first:
                    followers.append(second)
            follows = {}
            for userid in followers:
                k = int(random_() * 3) if n_tags else 0
                follows[userid] = {
                    "userid": userid, "remark": "", "description": "",
                    "createtime": GENERATED_SINCE + int(random_() * 365 * 86400),
                    "tag_ids": rng.sample(tag_ids, min(k, n_tags)), "remark_mobiles": [],
                    "add_way": 1, "state": STATES[int(random_() * len(STATES))]}
                self._by_user[userid][ext] = None
            number = self._seq["wmFake"]
            self.contacts[ext] = {
                "external_userid": ext,
                "name": SURNAMES[int(random_() * len(SURNAMES))]
                + GIVEN_NAMES[int(random_() * len(GIVEN_NAMES))],
                "avatar": f"https://wework.qpic.cn/fake/{number}/0" if random_() < 0.7 else "",
                "type": 1, "gender": int(random_() * 3),
                "unionid": f"oFake{number:010d}" if random_() < 0.6 else "", "follow": follows}
            made.append(ext)
        return made

    # --- error injection and tokens -------------------------------------------------------------

    def fail_next(self, path: str, errcode: int, times: int = 1, errmsg: str | None = None,
                  ) -> None:
        """The next `times` calls of `path` (as under /cgi-bin/) answer this error."""
        if times < 1:
            return
        with self._lock:
            key = path.removeprefix("/").removeprefix("cgi-bin/")
            self._failures.setdefault(key, []).append([errcode, errmsg, times])

    def expire_token(self) -> None:
        """The current token stops working (42001); gettoken then issues a new one."""
        with self._lock:
            if self._access_token:
                self._expired_tokens.add(self._access_token)
            self._access_token = None

    # --- WeCom-side actions ---------------------------------------------------------------------

    def confirm(self, msgid: str, userid: str | None = None) -> None:
        """The sender (or each sender) confirms the mass send in the client."""
        with self._lock:
            message = self.messages[msgid]
            users = [userid] if userid is not None else list(message["tasks"])
            if any(u not in message["tasks"] for u in users):
                raise ValueError(f"{userid!r} has no task in {msgid}")
            now = int(self.clock())
            today = datetime.fromtimestamp(now, SHANGHAI).date()
            group = message.get("chat_type") == "group"
            for user in users:
                if message["tasks"][user] == 2:
                    continue
                message["tasks"][user] = 2
                message["task_send_time"][user] = now
                for key in message["results"]:
                    sender, recipient = key
                    if sender != user:
                        continue
                    if group:
                        chat = self.groups.get(recipient)
                        status = 1 if chat and chat["owner"] == user else 2
                    elif user not in self.contacts.get(recipient, {}).get("follow", {}):
                        status = 2
                    elif self._received_on.get(recipient) == today:
                        status = 3
                    else:
                        status = 1
                        self._received_on[recipient] = today
                    message["results"][key] = status
                    if status == 1:
                        message["result_send_time"][key] = now

    def issue_welcome_code(self, userid: str, external_userid: str) -> str:
        """A WelcomeCode as an add_external_contact event carries, valid `welcome_ttl` s."""
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._welcome_codes[code] = {"issued": self.clock(), "used": False,
                                         "userid": userid, "external_userid": external_userid}
        return code

    def mark_mass_received(self, external_userid: str, on: date | None = None) -> None:
        """The customer got a mass send from this corp on that day (today in Shanghai), so
        another one that day is refused (status 3)."""
        with self._lock:
            self._received_on[external_userid] = on or datetime.fromtimestamp(
                self.clock(), SHANGHAI).date()

    def callback_xml(self, fields: dict) -> str:
        envelope = {"ToUserName": self.corp_id, "FromUserName": "sys",
                    "CreateTime": int(self.clock()), "MsgType": "event", **fields}
        return f"<xml>{_xml_value(envelope)}</xml>"

    def _crypt(self) -> WXBizMsgCrypt:
        return WXBizMsgCrypt(token=self.token, encoding_aes_key=self.encoding_aes_key,
                             receive_id=self.corp_id)

    def fire(self, url: str, fields: dict, *, timestamp: str | int | None = None,
             nonce: str | None = None) -> tuple[int, str]:
        """POST the event, encrypted and signed as WeCom does; (status, body) of the answer."""
        timestamp = str(timestamp or int(time.time()))
        nonce = nonce or str(secrets.randbelow(10**10))
        encrypt, signature = self._crypt().encrypt_message(self.callback_xml(fields), timestamp,
                                                           nonce)
        body = (f"<xml><ToUserName>{_cdata(self.corp_id)}</ToUserName>"
                f"<Encrypt>{_cdata(encrypt)}</Encrypt>"
                f"<AgentID>{_cdata(self.agent_id)}</AgentID></xml>")
        query = {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce}
        return _http(_with_query(url, query), data=body.encode())

    def verify_url(self, url: str) -> tuple[int, str]:
        """WeCom's GET URL verification; raises CallbackMismatch when the app answers 200 with
        anything but the echostr's plaintext."""
        plain = str(secrets.randbelow(10**19))
        timestamp, nonce = str(int(time.time())), str(secrets.randbelow(10**10))
        crypt = self._crypt()
        echostr = crypt.encrypt(plain)
        status, body = _http(_with_query(url, {
            "msg_signature": crypt.signature(timestamp, nonce, echostr), "timestamp": timestamp,
            "nonce": nonce, "echostr": echostr}))
        if status == 200 and body != plain:
            raise CallbackMismatch(f"URL verification answered {body[:100]!r}, not {plain!r}")
        return status, body

    def contact_added(self, url: str, userid: str, external_userid: str, *, state: str = "",
                      name: str = "新客户", welcome: bool = True,
                      ) -> tuple[int, str, str | None]:
        """The customer adds `userid` (through a contact way with `state`): the relation is
        made here, then add_external_contact is fired with a fresh WelcomeCode."""
        with self._lock:
            if userid not in self.staff:
                raise ValueError(f"{userid!r} is not a staff member: add_staff() first")
            spec = {"userid": userid, "state": state, "createtime": int(self.clock())}
            contact = self.contacts.get(external_userid)
            if contact is None:
                self.add_contact(external_userid, name=name, follow=[spec])
            else:
                self._set_follow(contact, spec)
            code = self.issue_welcome_code(userid, external_userid) if welcome else None
        fields = {"Event": "change_external_contact", "ChangeType": "add_external_contact",
                  "UserID": userid, "ExternalUserID": external_userid, "State": state}
        if code:
            fields["WelcomeCode"] = code
        status, body = self.fire(url, fields)
        return status, body, code

    def contact_removed(self, url: str, userid: str, external_userid: str, *,
                        change_type: str = "del_follow_user") -> tuple[int, str]:
        """The relation ends: del_follow_user (the customer deleted the member) or
        del_external_contact (the member deleted the customer), then the callback."""
        self.remove_follow(external_userid, userid)
        fields = {"Event": "change_external_contact", "ChangeType": change_type,
                  "UserID": userid, "ExternalUserID": external_userid}
        if change_type == "del_external_contact":
            fields["Source"] = ""
        return self.fire(url, fields)

    # --- HTTP dispatch --------------------------------------------------------------------------

    def _respond(self, path: str, query: str, raw: bytes) -> tuple[int, str, bytes]:
        if path.startswith("/cgi-bin/"):
            payload = self._call(path.removeprefix("/cgi-bin/"), query, raw)
            return (200, "application/json; charset=utf-8",
                    json.dumps(payload, ensure_ascii=False).encode())
        if path.startswith("/fake/qr/") and path.endswith(".png"):
            config_id = path.removeprefix("/fake/qr/").removesuffix(".png")
            with self._lock:
                known = config_id in self.contact_ways
            if known:
                buffer = io.BytesIO()
                segno.make(f"https://work.weixin.qq.com/ca/{config_id}", error="m").save(
                    buffer, kind="png", scale=6, border=2)
                return 200, "image/png", buffer.getvalue()
        return 404, "text/plain; charset=utf-8", b"not found"

    def _call(self, api: str, query: str, raw: bytes) -> dict:
        params = {key: values[0] for key, values in
                  parse_qs(query, keep_blank_values=True).items()}
        body, malformed = None, False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                malformed = True
        with self._lock:
            self.calls.append((api, params, body))
            try:
                self._take_failure(api)
                route = self._routes.get(api)
                if route is None:
                    raise ApiError(40058, "unknown api")
                handler, needs_body = route
                if api != "gettoken":
                    self._check_token(params.get("access_token", ""))
                if malformed or (needs_body and not isinstance(body, dict)):
                    raise ApiError(47001)
                answer = handler(params, body if isinstance(body, dict) else {})
            except ApiError as exc:
                return {"errcode": exc.errcode, "errmsg": exc.errmsg}
        return {"errcode": 0, "errmsg": "ok", **answer}

    def _take_failure(self, api: str) -> None:
        queue = self._failures.get(api)
        if not queue:
            return
        errcode, errmsg, _times = failure = queue[0]
        failure[2] -= 1
        if failure[2] <= 0:
            queue.pop(0)
        raise ApiError(errcode, errmsg)

    def _check_token(self, token: str) -> None:
        if not token:
            raise ApiError(41001)
        if token == self._access_token:
            if self.clock() - self._token_issued < TOKEN_TTL:
                return
            raise ApiError(42001)
        raise ApiError(42001 if token in self._expired_tokens else 40014)

    def _check_staff(self, userid: Any) -> str:
        if not isinstance(userid, str) or userid not in self.staff:
            raise ApiError(60111, f"invalid userid: {userid}")
        return userid

    def _check_item(self, api: str, item: str) -> None:
        errcode = self.item_failures.get((api, item))
        if errcode:
            raise ApiError(errcode)

    # --- rendering ----------------------------------------------------------------------------

    def _render_contact(self, contact: dict) -> dict:
        return {key: contact[key] for key in
                ("external_userid", "name", "avatar", "type", "gender", "unionid")}

    def _render_follow_user(self, follow: dict) -> dict:
        tags = []
        for tid in follow["tag_ids"]:
            tag = self.tags.get(tid)
            if tag is not None:
                tags.append({"group_name": self.tag_groups[tag["group_id"]]["group_name"],
                             "tag_name": tag["name"], "type": 1, "tag_id": tid})
        rendered = {key: value for key, value in follow.items() if key != "tag_ids"}
        rendered["tags"] = tags
        return rendered

    def _render_follow_info(self, follow: dict) -> dict:
        rendered = {key: value for key, value in follow.items() if key != "tag_ids"}
        rendered["tag_id"] = [t for t in follow["tag_ids"] if t in self.tags]
        return rendered

    def _render_group(self, gid: str, only: set[str] | None = None) -> dict:
        group = self.tag_groups[gid]
        tag_ids = [t for t in group["tag_ids"] if only is None or t in only]
        tags = sorted((self.tags[t] for t in tag_ids), key=lambda tag: -tag["order"])
        return {"group_id": gid, "group_name": group["group_name"],
                "create_time": group["create_time"], "order": group["order"], "deleted": False,
                "tag": [{"id": t["id"], "name": t["name"], "create_time": t["create_time"],
                         "order": t["order"], "deleted": False} for t in tags]}

    # --- endpoints: token, contacts -------------------------------------------------------------

    def _gettoken(self, params: dict, body: dict) -> dict:
        corpid, secret = params.get("corpid", ""), params.get("corpsecret", "")
        if not corpid:
            raise ApiError(41002)
        if corpid != self.corp_id:
            raise ApiError(40013)
        if not secret:
            raise ApiError(41004)
        if secret != self.secret:
            raise ApiError(40001)
        now = self.clock()
        if self._access_token is None or now - self._token_issued >= TOKEN_TTL:
            if self._access_token:
                self._expired_tokens.add(self._access_token)
            self._access_token = secrets.token_urlsafe(64)
            self._token_issued = now
            self.tokens_issued += 1
        return {"access_token": self._access_token,
                "expires_in": TOKEN_TTL - int(now - self._token_issued)}

    def _follow_user_list(self, params: dict, body: dict) -> dict:
        return {"follow_user": list(self.staff)}

    def _contact_list(self, params: dict, body: dict) -> dict:
        userid = params.get("userid", "")
        if userid in self.fail_user:
            raise ApiError(self.fail_user[userid])
        self._check_staff(userid)
        return {"external_userid": list(self._by_user[userid])}

    def _contact_get(self, params: dict, body: dict) -> dict:
        ext = params.get("external_userid", "")
        self._check_item("externalcontact/get", ext)
        contact = self.contacts.get(ext)
        if contact is None:
            raise ApiError(84061)
        return {"external_contact": self._render_contact(contact),
                "follow_user": [self._render_follow_user(f) for f in contact["follow"].values()]}

    def _batch_get_by_user(self, params: dict, body: dict) -> dict:
        users = _strings(body.get("userid_list"), "userid_list")
        if not users or len(users) > 100:
            raise ApiError(40058, "userid_list must hold 1 to 100 userids")
        users = list(dict.fromkeys(users))
        limit = _int(body.get("limit"), 50, 1, 100, "limit")
        for userid in users:
            if userid in self.fail_user:
                raise ApiError(self.fail_user[userid])
            self._check_staff(userid)
        cursor = body.get("cursor") or ""
        if cursor:
            snapshot_id, offset = _parse_cursor(cursor, 2)
            snapshot = self._snapshots.get(snapshot_id)
            if snapshot is None or snapshot[0] != tuple(users) or offset > len(snapshot[1]):
                raise ApiError(40056)
            pairs = snapshot[1]
        else:
            # The listing is fixed at the first page, so paging covers every pair exactly once
            # even while contacts come and go; gone ones are left out of their page.
            offset = 0
            pairs = [(ext, userid) for userid in users for ext in self._by_user[userid]]
            self._seq["snapshot"] = snapshot_id = self._seq.get("snapshot", 0) + 1
            self._snapshots[snapshot_id] = (tuple(users), pairs)
            while len(self._snapshots) > SNAPSHOTS_KEPT:
                self._snapshots.popitem(last=False)
        end = offset + limit
        entries = []
        for ext, userid in pairs[offset:end]:
            contact = self.contacts.get(ext)
            follow = contact["follow"].get(userid) if contact else None
            if follow is not None:
                entries.append({"external_contact": self._render_contact(contact),
                                "follow_info": self._render_follow_info(follow)})
        return {"external_contact_list": entries,
                "next_cursor": _cursor(snapshot_id, end) if end < len(pairs) else ""}

    # --- endpoints: corp tags -------------------------------------------------------------------

    def _corp_tag_list(self, params: dict, body: dict) -> dict:
        tag_filter = set(_strings(body.get("tag_id"), "tag_id"))
        group_filter = set(_strings(body.get("group_id"), "group_id"))
        gids = sorted(self.tag_groups, key=lambda g: -self.tag_groups[g]["order"])
        if group_filter:
            groups = [self._render_group(g) for g in gids if g in group_filter]
        elif tag_filter:
            groups = [self._render_group(g, tag_filter) for g in gids
                      if tag_filter.intersection(self.tag_groups[g]["tag_ids"])]
        else:
            groups = [self._render_group(g) for g in gids]
        return {"tag_group": groups}

    def _add_corp_tag(self, params: dict, body: dict) -> dict:
        specs = body.get("tag") or []
        if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
            raise ApiError(40058, "tag must be a list of {name, order}")
        gid, new = self._add_tags(body.get("group_id"), body.get("group_name") or "",
                                  body.get("order") or 0, specs)
        return {"tag_group": self._render_group(gid, set(new))}

    def _edit_corp_tag(self, params: dict, body: dict) -> dict:
        item_id, name, order = body.get("id"), body.get("name"), body.get("order")
        if item_id in self.tags:
            item = self.tags[item_id]
            siblings = [self.tags[t]["name"] for t in self.tag_groups[item["group_id"]]["tag_ids"]
                        if t != item_id]
            name_key = "name"
        elif item_id in self.tag_groups:
            item = self.tag_groups[item_id]
            siblings = [g["group_name"] for g in self.tag_groups.values() if g is not item]
            name_key = "group_name"
        else:
            raise ApiError(40068)
        if name is not None:
            if not isinstance(name, str) or not name.strip():
                raise ApiError(40058, "invalid name")
            if name in siblings:
                raise ApiError(40071)
            item[name_key] = name
        if order is not None:
            item["order"] = _int(order, 0, 0, 2**32 - 1, "order")
        return {}

    def _del_corp_tag(self, params: dict, body: dict) -> dict:
        tag_ids = _strings(body.get("tag_id"), "tag_id")
        group_ids = _strings(body.get("group_id"), "group_id")
        if not tag_ids and not group_ids:
            raise ApiError(40068)
        if any(t not in self.tags for t in tag_ids) or any(
                g not in self.tag_groups for g in group_ids):
            raise ApiError(40068)
        for gid in group_ids:
            for tid in self.tag_groups.pop(gid)["tag_ids"]:
                self.tags.pop(tid, None)
        for tid in tag_ids:
            tag = self.tags.pop(tid, None)
            group = self.tag_groups.get(tag["group_id"]) if tag else None
            if group is not None:
                group["tag_ids"].remove(tid)
                if not group["tag_ids"]:
                    del self.tag_groups[tag["group_id"]]
        return {}

    def _mark_tag(self, params: dict, body: dict) -> dict:
        userid = self._check_staff(body.get("userid"))
        ext = body.get("external_userid") or ""
        self._check_item("externalcontact/mark_tag", ext)
        add = _strings(body.get("add_tag"), "add_tag")
        remove = _strings(body.get("remove_tag"), "remove_tag")
        if not add and not remove:
            raise ApiError(40058, "add_tag and remove_tag cannot both be empty")
        if any(t not in self.tags for t in add + remove):
            raise ApiError(40068)
        follow = self.contacts.get(ext, {}).get("follow", {}).get(userid)
        if follow is None:
            raise ApiError(84061)
        kept = [t for t in follow["tag_ids"] if t not in remove]
        follow["tag_ids"] = kept + [t for t in dict.fromkeys(add) if t not in kept]
        return {}

    # --- endpoints: contact ways and welcome messages ---------------------------------------

    def _check_way(self, body: dict, *, new: bool) -> None:
        state = body.get("state", "")
        if state is not None and (not isinstance(state, str) or len(state) > MAX_STATE_CHARS):
            raise ApiError(40058, f"state must be a string of at most {MAX_STATE_CHARS} chars")
        users = _strings(body.get("user"), "user")
        for userid in users:
            self._check_staff(userid)
        if new:
            parties = body.get("party") or []
            if body.get("type") not in (1, 2) or body.get("scene") not in (1, 2):
                raise ApiError(40058, "type and scene must be 1 or 2")
            if not users and not parties:
                raise ApiError(40058, "user or party is required")
            if body["type"] == 1 and len(users) + len(parties) != 1:
                raise ApiError(40058, "a single-member contact way (type 1) takes one user")

    def _way(self, body: dict) -> dict:
        way = self.contact_ways.get(body.get("config_id") or "")
        if way is None:
            raise ApiError(41044)
        return way

    def _add_contact_way(self, params: dict, body: dict) -> dict:
        self._check_way(body, new=True)
        config_id = uuid.uuid4().hex
        way = self.contact_ways[config_id] = {**body, "config_id": config_id}
        answer = {"config_id": config_id}
        if body["scene"] == 2:
            way["qr_code"] = answer["qr_code"] = f"{self.root_url}fake/qr/{config_id}.png"
        return answer

    def _update_contact_way(self, params: dict, body: dict) -> dict:
        way = self._way(body)
        self._check_way(body, new=False)
        way.update({k: v for k, v in body.items()
                    if k not in ("config_id", "type", "scene", "qr_code")})
        return {}

    def _get_contact_way(self, params: dict, body: dict) -> dict:
        return {"contact_way": dict(self._way(body))}

    def _del_contact_way(self, params: dict, body: dict) -> dict:
        del self.contact_ways[self._way(body)["config_id"]]
        return {}

    def _send_welcome_msg(self, params: dict, body: dict) -> dict:
        entry = self._welcome_codes.get(body.get("welcome_code") or "")
        if entry is None:
            raise ApiError(41096)
        if entry["used"]:
            raise ApiError(41051)
        if self.clock() - entry["issued"] > self.welcome_ttl:
            raise ApiError(41096, "welcome_code expired")
        _content(body)
        entry["used"] = True
        self.welcome_sent.append(body)
        return {}

    # --- endpoints: mass sends and moments ------------------------------------------------------

    def _tag_filter(self, sender: str, tag_filter: Any) -> list[str]:
        """The sender's contacts, narrowed by {group_list: [{tag_list}]}: any tag of a group,
        every group."""
        groups = tag_filter.get("group_list") if isinstance(tag_filter, dict) else None
        wanted = [set(_strings(g.get("tag_list"), "tag_list")) for g in groups or []
                  if isinstance(g, dict)]
        recipients = []
        for ext in self._by_user[sender]:
            tags = set(self.contacts[ext]["follow"][sender]["tag_ids"])
            if all(tags & group for group in wanted):
                recipients.append(ext)
        return recipients

    def _add_msg_template(self, params: dict, body: dict) -> dict:
        chat_type = body.get("chat_type") or "single"
        if chat_type not in ("single", "group"):
            raise ApiError(40058, "chat_type must be single or group")
        if not body.get("sender"):
            raise ApiError(40058, "sender is required")
        sender = self._check_staff(body.get("sender"))
        _content(body)
        fail_list: list[str] = []
        if chat_type == "single":
            given = _strings(body.get("external_userid"), "external_userid")
            if len(given) > MAX_MASS_RECIPIENTS:
                raise ApiError(40058, f"external_userid exceeds the limit of "
                                      f"{MAX_MASS_RECIPIENTS} recipients")
            if given:
                recipients = []
                for ext in dict.fromkeys(given):
                    followed = sender in self.contacts.get(ext, {}).get("follow", {})
                    if followed and not self.item_failures.get(
                            ("externalcontact/add_msg_template", ext)):
                        recipients.append(ext)
                    else:
                        fail_list.append(ext)
            else:
                recipients = self._tag_filter(sender, body.get("tag_filter"))
        else:
            chats = _strings(body.get("chat_id_list"), "chat_id_list")
            owned = [c for c, chat in self.groups.items() if chat["owner"] == sender]
            recipients = [c for c in dict.fromkeys(chats) if c in owned] if chats else owned
            fail_list = [c for c in dict.fromkeys(chats) if c not in owned]
        msgid = self._next_id("msgFake", 6, self.messages)
        self.messages[msgid] = {
            **body, "msgid": msgid, "create_time": int(self.clock()), "tasks": {sender: 0},
            "task_send_time": {}, "results": {(sender, r): 0 for r in recipients},
            "result_send_time": {}}
        return {"fail_list": fail_list, "msgid": msgid}

    def _message(self, body: dict) -> dict:
        message = self.messages.get(body.get("msgid") or "")
        if message is None:
            raise ApiError(40058, "invalid msgid")
        return message

    def _groupmsg_task(self, params: dict, body: dict) -> dict:
        message = self._message(body)
        limit = _int(body.get("limit"), 500, 1, 1000, "limit")
        tasks = []
        for userid, status in message["tasks"].items():
            task = {"userid": userid, "status": status}
            if userid in message["task_send_time"]:
                task["send_time"] = message["task_send_time"][userid]
            tasks.append(task)
        page, next_cursor = _page(tasks, body.get("cursor"), limit, 2)
        return {"task_list": page, "next_cursor": next_cursor}

    def _remind_groupmsg_send(self, params: dict, body: dict) -> dict:
        message = self._message(body)
        if all(status == 2 for status in message["tasks"].values()):
            raise ApiError(41063, "the mass send was sent already")
        self.reminded.append(message["msgid"])
        return {}

    def _groupmsg_send_result(self, params: dict, body: dict) -> dict:
        message = self._message(body)
        limit = _int(body.get("limit"), 500, 1, 1000, "limit")
        userid = body.get("userid") or None
        field = "chat_id" if message.get("chat_type") == "group" else "external_userid"
        sent = []
        for key, status in message["results"].items():
            if userid is not None and key[0] != userid:
                continue
            item = {field: key[1], "userid": key[0], "status": status}
            if key in message["result_send_time"]:
                item["send_time"] = message["result_send_time"][key]
            sent.append(item)
        page, next_cursor = _page(sent, body.get("cursor"), limit, 3)
        return {"send_list": page, "next_cursor": next_cursor}

    def _add_moment_task(self, params: dict, body: dict) -> dict:
        _content(body)
        jobid = self._next_id("jobFake", 6, self.moments)
        self.moments[jobid] = body
        self._moment_ids[jobid] = self._next_id("momFake", 6)
        return {"jobid": jobid}

    def _moment_task_result(self, params: dict, body: dict) -> dict:
        jobid = params.get("jobid", "")
        if jobid not in self.moments:
            raise ApiError(40088)
        visible = self.moments[jobid].get("visible_range") or {}
        senders = (visible.get("sender_list") or {}).get("user_list") or []
        tag_list = (visible.get("external_contact_list") or {}).get("tag_list") or []
        return {"status": 3, "type": "add_moment_task", "result": {
            "errcode": 0, "errmsg": "ok", "moment_id": self._moment_ids[jobid],
            "invalid_sender_list": {"user_list": [u for u in senders if u not in self.staff],
                                    "department_list": []},
            "invalid_external_contact_list": {
                "tag_list": [t for t in tag_list if t not in self.tags]}}}

    # --- endpoints: group chats and app messages ------------------------------------------------

    def _groupchat_list(self, params: dict, body: dict) -> dict:
        limit = _int(body.get("limit"), 0, 1, 1000, "limit")
        if not limit:
            raise ApiError(40058, "limit must be between 1 and 1000")
        _int(body.get("status_filter"), 0, 0, 3, "status_filter")
        owner_filter = body.get("owner_filter") or {}
        owners = _strings(owner_filter.get("userid_list") if isinstance(owner_filter, dict)
                          else None, "owner_filter.userid_list")
        if len(owners) > 100:
            raise ApiError(40058, "owner_filter.userid_list holds at most 100 userids")
        chats = [{"chat_id": c, "status": chat["status"]} for c, chat in self.groups.items()
                 if not owners or chat["owner"] in owners]
        page, next_cursor = _page(chats, body.get("cursor"), limit, 1)
        return {"group_chat_list": page, "next_cursor": next_cursor}

    def _groupchat_get(self, params: dict, body: dict) -> dict:
        chat_id = body.get("chat_id") or ""
        self._check_item("externalcontact/groupchat/get", chat_id)
        chat = self.groups.get(chat_id)
        if chat is None:
            raise ApiError(90501)
        members = [dict(m) for m in chat["member_list"]]
        if not body.get("need_name"):
            for member in members:
                member.pop("name", None)
        rendered = {k: v for k, v in chat.items() if k != "status"}
        rendered["member_list"] = members
        return {"group_chat": rendered}

    def _message_send(self, params: dict, body: dict) -> dict:
        if str(body.get("agentid", "")) != self.agent_id:
            raise ApiError(40056, "invalid agentid")
        if not body.get("msgtype"):
            raise ApiError(40058, "msgtype is required")
        touser = body.get("touser") or ""
        if not isinstance(touser, str):
            raise ApiError(40058, "touser must be a string")
        users = [] if touser == "@all" else [u for u in touser.split("|") if u]
        self.app_messages.append(body)
        return {"invaliduser": "|".join(u for u in users if u not in self.staff)}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "FakeWeCom/1.0"
    fake: FakeWeCom

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        url = urlsplit(self.path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length, self.close_connection = 0, True
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            status, content_type, payload = self.fake._respond(url.path, url.query, raw)
        except Exception:
            traceback.print_exc()
            status, content_type = 500, "application/json; charset=utf-8"
            payload = b'{"errcode": -1, "errmsg": "fake server error"}'
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, fmt: str, *args: Any) -> None:
        if self.fake.log_requests:
            super().log_message(fmt, *args)


# --- command line ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m wecom.fake`, shared with `manage.py wecom_fake`."""
    env = os.environ.get
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8399)
    parser.add_argument("--contacts", type=int, default=200, help="customers to generate")
    parser.add_argument("--staff", type=int, default=3, help="staff members to generate")
    parser.add_argument("--staff-ids", default="", metavar="A,B",
                        help="these UserIDs as the staff instead (e.g. the app's operators)")
    parser.add_argument("--groups", type=int, default=5, help="group chats to generate")
    parser.add_argument("--tags", type=int, default=6, help="corp tags to generate")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--callback-url", help="the app's callback URL, e.g. "
                        "http://127.0.0.1:8000/wecom/callback/")
    parser.add_argument("--add-every", type=float, metavar="SECONDS",
                        help="with --callback-url: a new customer adds a staff member this often")
    parser.add_argument("--corp-id", default=env("WECOM_CORP_ID") or SAMPLE_CORP_ID)
    parser.add_argument("--secret", default=env("WECOM_SECRET") or SAMPLE_SECRET)
    parser.add_argument("--token", default=env("WECOM_TOKEN") or SAMPLE_TOKEN)
    parser.add_argument("--aes-key", default=env("WECOM_ENCODING_AES_KEY") or SAMPLE_AES_KEY)
    parser.add_argument("--agent-id", default=env("WECOM_AGENT_ID") or SAMPLE_AGENT_ID)
    parser.add_argument("--log-requests", action="store_true", help="log every request")


def _say(text: str) -> None:
    print(text, flush=True)


def run(options: dict) -> int:
    """Serve until Ctrl-C; `options` as add_arguments parses them."""
    if options.get("add_every") and not options.get("callback_url"):
        raise SystemExit("--add-every needs --callback-url")
    fake = FakeWeCom(corp_id=options["corp_id"], secret=options["secret"],
                     token=options["token"], encoding_aes_key=options["aes_key"],
                     agent_id=options["agent_id"])
    fake.log_requests = options.get("log_requests", False)
    staff_ids = [u.strip() for u in (options.get("staff_ids") or "").split(",") if u.strip()]
    for userid in staff_ids:
        fake.add_staff(userid)
    made = fake.generate(contacts=options["contacts"],
                         staff=0 if staff_ids else options["staff"],
                         groups=options["groups"], tags=options["tags"], seed=options["seed"])
    base = fake.start(host=options["host"], port=options["port"])
    _say(f"Fake WeCom serving {base} — {made['contacts']} customers, {len(fake.staff)} staff, "
        f"{len(fake.groups)} group chats, {len(fake.tags)} tags. Ctrl-C stops it.")
    _say("Point the app at it:")
    for name, value in (("WECOM_API_BASE", base), ("WECOM_CORP_ID", fake.corp_id),
                        ("WECOM_SECRET", fake.secret), ("WECOM_TOKEN", fake.token),
                        ("WECOM_ENCODING_AES_KEY", fake.encoding_aes_key)):
        _say(f"export {name}={shlex.quote(value)}")
    url = options.get("callback_url")
    try:
        if url:
            try:
                status, _body = fake.verify_url(url)
                _say(f"URL verification of {url}: HTTP {status}")
            except (OSError, CallbackMismatch) as exc:
                _say(f"URL verification of {url} failed: {exc}")
        every = options.get("add_every")
        if not every:
            while True:
                time.sleep(3600)
        staff = list(fake.staff)
        generated = sorted({f["state"] for c in fake.contacts.values()
                            for f in c["follow"].values()}) or [""]
        rng = random.Random(options["seed"] + 1)
        turn = 0
        while True:
            time.sleep(every)
            # Through a QR code the app made, when there is one (with its staff), else a
            # generated channel.
            with fake._lock:
                ways = [w for w in fake.contact_ways.values() if w.get("state")]
            if ways and turn % 2 == 0:
                way = ways[turn // 2 % len(ways)]
                users = way.get("user") or staff
                userid, state = users[turn // 2 % len(users)], way["state"]
            else:
                userid, state = staff[turn % len(staff)], generated[turn % len(generated)]
            ext = fake.new_external_userid()
            name = rng.choice(SURNAMES) + rng.choice(GIVEN_NAMES)
            try:
                status, body, _code = fake.contact_added(url, userid, ext, state=state,
                                                         name=name)
                _say(f"{name} ({ext}) added {userid}, state {state!r}: HTTP {status} "
                    f"{body[:60]!r}")
            except OSError as exc:
                _say(f"{ext} added {userid}, but the callback failed: {exc}")
            turn += 1
    except KeyboardInterrupt:
        _say("stopped")
    finally:
        fake.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wecom.fake",
        description="A fake WeCom server (客户联系 API and callbacks) with generated data.")
    add_arguments(parser)
    return run(vars(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
