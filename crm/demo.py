"""Demo data: a believable private domain (staff, channels, groups, customers, events, orders).

`population` decides who everyone is (join time, persona, channel, who referred whom); then
one generator (`chunk_plan` → `chunk_rows`) yields the rows of each chunk of 5,000 customers
from the chunk's own seeded RNG, so a seed gives the same data, ids included on an empty
database, whatever the number of processes. Two sinks store the rows in one transaction: COPY
on PostgreSQL (fed by forked generator processes) and executemany elsewhere (SQLite). The
customer aggregates are computed while generating and equal what `customer_aggregates_refresh`
derives from the facts. Measurements: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import logging
import multiprocessing
import os
import random
import time
from array import array
from base64 import urlsafe_b64encode
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from math import sqrt
from operator import itemgetter

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group as Role
from django.core.management.color import no_style
from django.db import connection, transaction
from django.utils import timezone

from core import access
from core.models import AuditEntry
from crm.models import (
    EVENT_COUNT_LATEST,
    INBOUND_EVENT_TYPES,
    LATEST_FIELDS,
    Channel,
    Customer,
    CustomerTouch,
    Event,
    EventCount,
    Group,
    GroupMembership,
    Order,
    OrderItem,
)

logger = logging.getLogger(__name__)

CHUNK = 5_000            # customers per chunk: the unit of RNG, ids and work per process
DEMO_PASSWORD = "demo1234"
KEY_PREFIX = "demo:"     # idempotency keys of demo events; how a run recognises demo data
GROUP_SIZE = 300         # customers per group (社群) on average

# --- Vocabulary -----------------------------------------------------------------------------

SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜"
            "叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺")
FEMALE_GIVEN = "芳娜敏静丽艳婷雪琳颖洁欣悦佳怡晴璐萱雯倩瑶梦思雨诗嘉琪媛慧莉蕾薇岚露菲月彤妍"
MALE_GIVEN = "伟强磊军洋勇杰涛明超浩宇鹏辉俊峰博文轩晨阳斌鑫凯哲毅昊然宁志"
CITIES = (("上海", 14), ("北京", 12), ("杭州", 9), ("成都", 8), ("广州", 8), ("深圳", 9),
          ("南京", 5), ("苏州", 5), ("武汉", 5), ("重庆", 5), ("西安", 4), ("长沙", 4),
          ("天津", 3), ("厦门", 2), ("青岛", 2), ("宁波", 2), ("合肥", 2), ("昆明", 1), ("", 6))
PHONE_PREFIXES = ("138", "139", "136", "137", "135", "150", "151", "152", "158", "159", "182",
                  "183", "186", "187", "188", "177", "155", "156", "185", "189", "199", "191",
                  "166", "173", "180", "181")
AGE_BANDS = ("18-24", "25-29", "30-34", "35-39", "40-49", "50+")
SKIN_TYPES = ("干性", "油性", "混合性", "敏感肌", "中性")

# code, name, kind, share of acquisitions (%), cost per acquired customer (CNY)
CHANNELS = (
    ("store-qr", "门店扫码", Channel.Kind.STORE, 20, 3),
    ("wecom-qr", "企微活码", Channel.Kind.QR_CODE, 14, 5),
    ("package-card", "包裹卡", Channel.Kind.QR_CODE, 12, 4),
    ("official-account", "公众号", Channel.Kind.OFFICIAL_ACCOUNT, 10, 8),
    ("live", "直播", Channel.Kind.LIVESTREAM, 14, 25),
    ("douyin", "抖音", Channel.Kind.ADS, 12, 40),
    ("xiaohongshu", "小红书", Channel.Kind.SOCIAL, 10, 30),
    ("mini-program", "小程序", Channel.Kind.OTHER, 8, 6),
    ("referral", "朋友推荐", Channel.Kind.REFERRAL, 0, 15),   # reached through referrers only
)
REFERRAL_CHANNEL = len(CHANNELS) - 1
FRIEND_DATA = tuple(json.dumps({"channel": c[0]}) for c in CHANNELS)
OPERATOR_NAMES = (
    ("wang", "王", "芳"), ("li", "李", "娜"), ("zhang", "张", "敏"), ("liu", "刘", "洋"),
    ("chen", "陈", "静"), ("yang", "杨", "婷"), ("zhao", "赵", "磊"), ("huang", "黄", "丽"),
    ("zhou", "周", "杰"), ("wu", "吴", "琳"), ("xu", "徐", "悦"), ("sun", "孙", "浩"),
    ("ma", "马", "欣"), ("zhu", "朱", "颖"), ("hu", "胡", "晨"), ("guo", "郭", "佳"),
    ("he", "何", "雯"), ("gao", "高", "鹏"), ("lin", "林", "萱"), ("luo", "罗", "倩"),
)
GROUP_THEMES = ("会员福利群", "新品体验群", "护肤交流群", "直播秒杀群", "彩妆爱好者群", "老客专属群",
                "门店VIP群", "香氛分享群")
# sku, name, category, price in cents
PRODUCTS = (
    ("SK-H001", "玻尿酸保湿精华 30ml", "护肤", 29900), ("SK-H002", "烟酰胺亮肤面膜 10片", "护肤", 12900),
    ("SK-H003", "氨基酸洁面乳 120g", "护肤", 8900), ("SK-H004", "修护面霜 50g", "护肤", 35900),
    ("SK-H005", "维C精华 30ml", "护肤", 26900), ("SK-H006", "清透防晒乳 SPF50", "护肤", 16900),
    ("SK-H007", "紧致眼霜 15g", "护肤", 23900), ("SK-H008", "补水爽肤水 200ml", "护肤", 13900),
    ("SK-M001", "丝绒哑光口红", "彩妆", 16900), ("SK-M002", "水光气垫粉底", "彩妆", 21900),
    ("SK-M003", "九色眼影盘", "彩妆", 25900), ("SK-M004", "纤长睫毛膏", "彩妆", 12900),
    ("SK-M005", "控油定妆散粉", "彩妆", 14900), ("SK-M006", "防水眉笔", "彩妆", 5900),
    ("SK-F001", "白茶淡香水 50ml", "香氛", 49900), ("SK-F002", "无火香薰蜡烛", "香氛", 19900),
    ("SK-F003", "香氛身体乳 250ml", "香氛", 12900), ("SK-F004", "车载香薰", "香氛", 8900),
    ("SK-P001", "无硅油洗发水 500ml", "个护", 7900), ("SK-P002", "修护护发精油", "个护", 9900),
    ("SK-P003", "香氛沐浴露 500ml", "个护", 6900), ("SK-P004", "护手霜三支装", "个护", 5900),
    ("SK-G001", "节日限定礼盒", "礼盒", 69900), ("SK-G002", "护肤体验装礼盒", "礼盒", 19900),
    ("SK-G003", "新年彩妆礼盒", "礼盒", 59900),
)
SOURCES = (("youzan", "E", 45), ("weimob", "W", 20), ("store", "S", 25), ("manual", "M", 10))


def _json(value) -> str:
    # No backslash, tab or newline can appear: the strings go into COPY text format unescaped.
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


MESSAGES_IN = tuple(_json({"text": t}) for t in (
    "在吗？", "这个还有货吗", "什么时候发货呀", "敏感肌可以用吗", "谢谢～", "好的收到", "优惠券怎么用",
    "直播几点开始", "能再便宜点吗", "收到了，很好用", "想问下这两款有什么区别", "有小样可以试吗",
    "我是干皮，推荐哪款", "会员积分怎么查", "可以开发票吗"))
MESSAGES_OUT = tuple(_json({"text": t}) for t in (
    "新品上架提醒：春季限定系列来啦", "会员日活动预告，本周六全场满299减50", "护肤小课堂：换季如何保湿",
    "您的专属优惠券即将过期", "直播预告：今晚8点不见不散", "感谢您的支持，期待再次为您服务",
    "您关注的商品降价了", "社群专属福利已发放"))
WELCOME = _json({"text": "欢迎添加！送您一张20元新人券，有任何护肤问题都可以问我哦", "kind": "welcome"})
MOMENTS = tuple(_json({"action": a, "post": p}) for a in ("like", "like", "comment")
                for p in ("春季新品", "会员日", "护肤小知识", "买家秀", "直播回放"))
LINKS = tuple(_json({"url": f"https://shop.example.com/item/{sku}", "title": name})
              for sku, name, _c, _p in PRODUCTS[:12]) + tuple(
    _json({"url": f"https://shop.example.com/{path}", "title": title})
    for path, title in (("activity/member-day", "会员日活动"), ("live/replay", "直播回放"),
                        ("coupon/center", "领券中心")))
COUPONS = tuple(_json({"coupon": c}) for c in ("新人券20元", "满199减20", "满299减50", "会员日9折券",
                                               "生日礼券"))
SURVEYS = tuple(_json({"survey": s, "answer": a}) for s, answers in (
    ("肤质问卷", SKIN_TYPES), ("满意度调研", ("非常满意", "满意", "一般")),
    ("偏好调研", ("护肤", "彩妆", "香氛"))) for a in answers)
OPT_OUT = (_json({"reason": "不想再收到推送"}), _json({"reason": "消息太多"}), _json({}))
EMPTY = _json({})

ET = Event.Type
FRIEND_ADDED, FRIEND_DELETED = str(ET.FRIEND_ADDED), str(ET.FRIEND_DELETED)
MESSAGE_IN, MESSAGE_OUT = str(ET.MESSAGE_IN), str(ET.MESSAGE_OUT)
GROUP_JOINED, GROUP_LEFT = str(ET.GROUP_JOINED), str(ET.GROUP_LEFT)
MOMENTS_INTERACTION, LINK_CLICKED = str(ET.MOMENTS_INTERACTION), str(ET.LINK_CLICKED)
COUPON_REDEEMED, SURVEY_ANSWERED = str(ET.COUPON_REDEEMED), str(ET.SURVEY_ANSWERED)
REFERRAL, OPTED_OUT = str(ET.REFERRAL), str(ET.OPTED_OUT)
_INBOUND = frozenset(str(t) for t in INBOUND_EVENT_TYPES)
_TYPE_TIME = itemgetter(1, 0)
# (type, payloads, weight) of the inbound interactions of an engaged customer
INBOUND_MIX = ((MESSAGE_IN, MESSAGES_IN, 38), (MOMENTS_INTERACTION, MOMENTS, 26),
               (LINK_CLICKED, LINKS, 26), (SURVEY_ANSWERED, SURVEYS, 4),
               (COUPON_REDEEMED, COUPONS, 6))

# Persona kinds and their share (%). Dormant customers need an old enough join.
NEVER_ENGAGED, ENGAGED, ONE_PURCHASE, REPEAT_BUYER = ("never_engaged", "engaged", "one_purchase",
                                                      "repeat_buyer")
DORMANT, DELETED_US, REFERRER, OPTED_OUT_PERSONA = ("dormant", "deleted_us", "referrer",
                                                    "opted_out")
PERSONAS = ((NEVER_ENGAGED, 18), (ENGAGED, 24), (ONE_PURCHASE, 19), (REPEAT_BUYER, 14),
            (DORMANT, 10), (DELETED_US, 7), (REFERRER, 4), (OPTED_OUT_PERSONA, 4))
PERSONA_KINDS = tuple(name for name, _w in PERSONAS)
# Local hour-of-day weights: people chat at lunch and in the evening, not at 4 a.m.
HOUR_WEIGHTS = (2, 1, 1, 0, 0, 0, 1, 3, 5, 6, 6, 7, 9, 8, 6, 5, 5, 5, 6, 8, 10, 11, 9, 5)


def _table(pairs) -> tuple:
    """A lookup table in which each value appears as often as its weight."""
    return tuple(v for v, w in pairs for _ in range(w))


PERSONA_TABLE = _table(PERSONAS)
CITY_TABLE = _table(CITIES)
CHANNEL_TABLE = _table((i, c[3]) for i, c in enumerate(CHANNELS))
HOUR_TABLE = tuple(h * 3600 for h in _table(enumerate(HOUR_WEIGHTS)))
SOURCE_TABLE = _table(((name, prefix), w) for name, prefix, w in SOURCES)
INBOUND_TABLE = _table(((t, p), w) for t, p, w in INBOUND_MIX)
LINES_TABLE = (1,) * 12 + (2,) * 5 + (3,) * 2 + (4,)
GENDER_TABLE = ("female",) * 72 + ("male",) * 18 + ("unknown",) * 10
GIVEN_NAMES = {"female": FEMALE_GIVEN, "male": MALE_GIVEN, "unknown": FEMALE_GIVEN + MALE_GIVEN}
ATTRIBUTES = tuple(_json({"age_band": a, "skin_type": s}) for a in AGE_BANDS for s in SKIN_TYPES)
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DAY = 86_400
MASK64 = (1 << 64) - 1


def _mix(*parts) -> int:
    """A stable 64-bit number from the parts (Python's own hash() of str is salted per run)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _b62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, d = divmod(n, 62)
        out.append(BASE62[d])
    return "".join(out)


def _scramble(n: int, salt: int) -> int:
    """A bijection on 64-bit numbers, so distinct n give distinct, random-looking ids."""
    n = ((n + 1) * 0x9E3779B97F4A7C15) & MASK64
    n ^= salt
    return ((n ^ (n >> 29)) * 0xBF58476D1CE4E5B9) & MASK64


# --- Context --------------------------------------------------------------------------------

@dataclass
class Context:
    """Everything a chunk needs besides its number; made once, inherited by worker processes."""

    seed: int
    customers: int
    days: int
    anchor: int                      # end of history, epoch seconds (UTC)
    tz_offset: int                   # local time minus UTC, seconds (for daily rhythms)
    customer_base: int               # customer ids are customer_base + 1 + global index
    channel_ids: list[int]           # in CHANNELS order
    owner_ids: list[int]             # operators
    owner_weights: list[int]
    group_ids: list[int]
    group_chat_ids: list[str]
    start: int = 0
    day0: int = 0
    days_str: list[str] = field(default_factory=list)
    hms: list[str] = field(default_factory=list)
    salt: int = 0
    population: Population | None = None
    group_payloads: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.start = self.anchor - self.days * DAY
        self.day0 = self.start - self.start % DAY - DAY
        ndays = (self.anchor - self.day0) // DAY + 2
        first = datetime.fromtimestamp(self.day0, UTC)
        self.days_str = [(first + timedelta(days=i)).strftime("%Y-%m-%d ") for i in range(ndays)]
        self.hms = [f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60)
                    for s in range(60)]
        self.salt = _mix("demo-ids", self.seed)
        self.group_payloads = [_json({"group": chat_id}) for chat_id in self.group_chat_ids]

    @property
    def n_chunks(self) -> int:
        return -(-self.customers // CHUNK)

    def ts(self, t: int) -> str:
        """UTC timestamp text that both PostgreSQL (session in UTC) and Django's SQLite read."""
        d, s = divmod(t - self.day0, DAY)
        return self.days_str[d] + self.hms[s]

    def local_date(self, t: int) -> str:
        d = (t + self.tz_offset - self.day0) // DAY
        return self.days_str[d][:10].replace("-", "")


# --- The generator --------------------------------------------------------------------------

@dataclass
class ChunkPlan:
    """One chunk's facts before ids are given: what the sinks need, plus counts."""

    customers: list[tuple]
    events: list[tuple]              # (customer_id, type, t, data)
    orders: list[tuple]              # (customer_id, source, external_id, amount, status, t, t_refund)
    items: list[tuple]               # (order index in chunk, sku, name, category, quantity, price)
    memberships: list[tuple]         # (group_id, customer_id, t_joined, t_left)
    personas: Counter
    event_counts: list[tuple]        # (customer_id, type, total, since joining)

    def counts(self) -> tuple[int, int, int, int]:
        return len(self.events), len(self.orders), len(self.items), len(self.memberships)


def _cents(n: int) -> str:
    return f"{n // 100}.{n % 100:02d}"


def _join_time(ctx: Context, g: int, u: float) -> int:
    """Join times grow with the global index along a growing acquisition curve (more recent
    customers than old ones), so customer ids follow joined_at like in a real system."""
    a = 1.5                           # the last day acquires 2.5 times as many as the first
    f = (g + u) / ctx.customers
    x = (-1 + sqrt(1 + 2 * a * f * (1 + a / 2))) / a
    return min(ctx.start + int(x * (ctx.anchor - ctx.start)), ctx.anchor - 600)


def _clock(r, off: int):
    """`when(lo, hi, skew)`: a time in [lo, hi), early-skewed by `skew` > 1, at a plausible
    local hour of the day."""
    def when(lo: int, hi: int, skew: float = 1.0) -> int:
        if hi <= lo + 1:
            return lo
        t = lo + int((hi - lo) * (r() ** skew))
        if hi - lo > DAY:
            day = (t + off) // DAY * DAY - off
            t2 = day + HOUR_TABLE[int(r() * len(HOUR_TABLE))] + int(r() * 3600)
            if lo <= t2 < hi:
                return t2
        return t
    return when


@dataclass
class Population:
    """Who the customers are, by global index: decided for everyone before any chunk, because
    a referrer's friends may join any time later (in any chunk)."""

    joined: array                                  # epoch seconds
    persona: bytearray                             # index into PERSONA_KINDS
    channel: bytearray                             # index into CHANNELS
    referred_by: dict[int, int]                    # friend -> referrer
    referrals: dict[int, list[tuple[int, int]]]    # referrer -> [(when, friend)]


def population(ctx: Context) -> Population:
    rng = random.Random(_mix("people", ctx.seed))
    r = rng.random
    when = _clock(r, ctx.tz_offset)
    n, anchor = ctx.customers, ctx.anchor
    joined, persona, channel = array("q", bytes(8 * n)), bytearray(n), bytearray(n)
    kinds = {name: i for i, name in enumerate(PERSONA_KINDS)}
    for g in range(n):
        j = _join_time(ctx, g, r())
        jt = when(j - DAY // 2, j + DAY // 2) if ctx.start + DAY < j < anchor - DAY else j
        joined[g] = jt
        p = PERSONA_TABLE[int(r() * 100)]
        if p == DORMANT and anchor - jt < 75 * DAY:
            p = ENGAGED if r() < 0.5 else ONE_PURCHASE     # too new to have gone quiet
        persona[g] = kinds[p]
        channel[g] = CHANNEL_TABLE[int(r() * len(CHANNEL_TABLE))]
    # Referrers bring friends who join later, through the referral channel.
    referred_by: dict[int, int] = {}
    referrals: dict[int, list[tuple[int, int]]] = {}
    referrer = kinds[REFERRER]
    for a in range(n - 1):
        if persona[a] != referrer:
            continue
        for _ in range(1 + int(r() * 3)):
            for _attempt in range(4):
                b = a + 1 + int(r() * (n - a - 1))
                if b not in referred_by and joined[b] > joined[a] + 2 * DAY:
                    referred_by[b] = a
                    channel[b] = REFERRAL_CHANNEL
                    t = max(joined[a] + 60, joined[b] - 60 - int(r() * DAY))
                    referrals.setdefault(a, []).append((t, b))
                    break
    return Population(joined, persona, channel, referred_by, referrals)


def external_id(ctx: Context, g: int) -> str:
    """A WeCom-like external_userid, distinct for every customer of a seed."""
    n = _scramble(ctx.customer_base + g, ctx.salt)
    return "wm" + urlsafe_b64encode(n.to_bytes(9, "big")).decode()


def _event_count_row(ctx: Context, cid: int, joined: int, kind: str, times: list[int]
                     ) -> tuple:
    """(customer, type, total, since joining, latest_1 … latest_5) of one customer's events
    of one type, `times` oldest first."""
    latest = [ctx.ts(t) for t in times[:-EVENT_COUNT_LATEST - 1:-1]]
    return (cid, kind, len(times), sum(t >= joined for t in times), *latest,
            *[None] * (EVENT_COUNT_LATEST - len(latest)))


def chunk_plan(ctx: Context, k: int) -> ChunkPlan:
    """Customers k·CHUNK … (k+1)·CHUNK − 1 (by global index) with all their facts."""
    rng = random.Random(_mix("demo", ctx.seed, k))
    r = rng.random
    when = _clock(r, ctx.tz_offset)
    pop = ctx.population
    anchor = ctx.anchor
    n_groups = len(ctx.group_ids)
    owner_table = _table(zip(ctx.owner_ids, ctx.owner_weights, strict=True))
    group_json = ctx.group_payloads
    ts = ctx.ts
    updated = ts(anchor)
    glist = range(k * CHUNK, min(ctx.customers, (k + 1) * CHUNK))

    customers, events, orders, items, memberships = [], [], [], [], []
    event_counts: list[tuple] = []
    personas: Counter = Counter()
    for g in glist:
        cid = ctx.customer_base + 1 + g
        p, jt, ch = PERSONA_KINDS[pop.persona[g]], pop.joined[g], pop.channel[g]
        personas[p] += 1
        age = anchor - jt
        evs: list[tuple] = []
        add = evs.append
        status, status_at, opted = "active", jt, False
        active_end = anchor                      # no inbound interaction or paid order after
        out_end = anchor                         # no message from us after
        if p == DELETED_US:
            x = jt + 600 + int((age - 600) * r() ** 0.8) if age > 1200 else jt + age // 2
            active_end = out_end = x
            status, status_at = "deleted_us", x
        elif p == DORMANT:
            silence = min(age - 14 * DAY, int((60 + r() * 180) * DAY))
            active_end = anchor - silence
        elif p == OPTED_OUT_PERSONA:
            out_end = jt + 300 + int((age - 300) * r() ** 0.6) if age > 600 else jt + age // 2
            opted = True
        span = active_end - jt
        add((jt, FRIEND_ADDED, FRIEND_DATA[ch]))
        if r() < 0.93 and jt + 600 < out_end:
            add((jt + 30 + int(r() * 570), MESSAGE_OUT, WELCOME))

        # Inbound interactions
        if p == NEVER_ENGAGED:
            n_in = 0
        elif p in (ENGAGED, ONE_PURCHASE):
            n_in = 2 + int(r() * 7)
        elif p in (REPEAT_BUYER, REFERRER):
            n_in = 3 + int(r() * 11)
        else:
            n_in = 1 + int(r() * 5)
        lo = jt + 60
        for _ in range(n_in):
            kind, payloads = INBOUND_TABLE[int(r() * 100)]
            add((when(lo, active_end, 1.6), kind, payloads[int(r() * len(payloads))]))

        # Group stays (社群): joining is inbound, leaving is not.
        n_stays = 0
        if p != NEVER_ENGAGED and n_groups:
            n_stays = (0, 0, 0, 1, 1, 1, 1, 2, 2, 3)[int(r() * 10)]
            if p == REFERRER:
                n_stays += 1
        taken = set()
        for _ in range(n_stays):
            gi = int(r() * n_groups)
            if gi in taken:
                continue
            taken.add(gi)
            tj = when(lo, active_end, 1.3)
            tl = None
            if r() < 0.3 or (p == DELETED_US and r() < 0.5):
                leave_by = out_end          # those who deleted us leave no later than that
                tl = tj + 60 + int((leave_by - tj - 60) * r()) if leave_by - tj > 120 else None
            memberships.append((ctx.group_ids[gi], cid, tj, tl))
            chat = group_json[gi]
            add((tj, GROUP_JOINED, chat))
            if tl is not None:
                add((tl, GROUP_LEFT, chat))

        # Orders
        if p == ONE_PURCHASE:
            n_orders = 1
        elif p in (REPEAT_BUYER, REFERRER):
            n_orders = 2 + int(r() * r() * 20)
        elif p == DORMANT:
            n_orders = (0, 1, 1, 2)[int(r() * 4)]
        elif p in (DELETED_US, OPTED_OUT_PERSONA):
            n_orders = 1 if r() < 0.25 else 0
        else:
            n_orders = 0
        stamps = []
        if span > 7200:
            first_skew = 2.0 if n_orders == 1 else 1.0
            stamps = sorted(when(jt + 3600, active_end, first_skew) for _ in range(n_orders))
        # A few bought before they joined: the lifecycle rules must not count those.
        if r() < 0.04 and jt - ctx.start > 2 * DAY:
            stamps.insert(0, when(max(ctx.start, jt - 120 * DAY), jt - DAY))
        n_paid, spent, first_at, last_at = 0, 0, None, None
        for j, placed in enumerate(stamps[:99]):
            o_index = len(orders)
            total = 0
            for _ in range(LINES_TABLE[int(r() * 20)]):
                sku, name, category, price = PRODUCTS[int(r() * len(PRODUCTS))]
                qty = 1 if r() < 0.85 else 2 + int(r() * 2)
                total += price * qty
                items.append((o_index, sku, name, category, qty, _cents(price)))
            discount = (0, 0, 0, 2000, 5000)[int(r() * 5)]
            amount = total - discount if total > 3 * discount else total
            source, prefix = SOURCE_TABLE[int(r() * 100)]
            if ch == 0 and r() < 0.6:
                source, prefix = "store", "S"
            ext = f"{prefix}{ctx.local_date(placed)}{g:08d}{j:02d}"
            refunded = None
            if r() < 0.05 and anchor - placed > DAY:
                refunded = placed + min(anchor - placed - 1, 3600 + int(r() * 14 * DAY))
            orders.append((cid, source, ext, _cents(amount), "refunded" if refunded else "paid",
                           placed, refunded))
            if refunded is None:
                n_paid += 1
                spent += amount
                first_at = placed if first_at is None else min(first_at, placed)
                last_at = placed if last_at is None else max(last_at, placed)
            if placed > jt:
                if r() < 0.35:
                    add((max(lo, placed - 300 - int(r() * DAY)), LINK_CLICKED,
                         LINKS[int(r() * len(LINKS))]))
                if r() < 0.25:
                    add((max(lo, placed - int(r() * 600)), COUPON_REDEEMED,
                         COUPONS[int(r() * len(COUPONS))]))

        for t, b in pop.referrals.get(g, ()):
            add((t, REFERRAL, f'{{"referred": "{external_id(ctx, b)}"}}'))

        # Our broadcasts and 1:1 follow-ups; dormant customers keep receiving them.
        n_out = (0, 1, 1, 1, 2, 3)[int(r() * 6)] + n_in // 5
        for _ in range(n_out):
            if out_end - jt > 3600:
                add((when(jt + 1800, out_end), MESSAGE_OUT, MESSAGES_OUT[int(r() * 8)]))
        if p == DELETED_US:
            add((active_end, FRIEND_DELETED, EMPTY))
        elif p == OPTED_OUT_PERSONA:
            add((out_end, OPTED_OUT, OPT_OUT[int(r() * 3)]))

        # By type, then time: the heap then follows the (customer, type, occurred_at) index,
        # which PostgreSQL builds fast from presorted input.
        evs.sort(key=_TYPE_TIME)
        last_in = None
        # The per-type event counts (crm.EventCount), from the same list: one run of times
        # per type, oldest first.
        run_kind, run_times = None, []
        for t, kind, _d in evs:
            if kind in _INBOUND and (last_in is None or t > last_in):
                last_in = t
            if kind != run_kind:
                if run_kind is not None:
                    event_counts.append(_event_count_row(ctx, cid, jt, run_kind, run_times))
                run_kind, run_times = kind, []
            run_times.append(t)
        if run_kind is not None:
            event_counts.append(_event_count_row(ctx, cid, jt, run_kind, run_times))
        last_active = last_in if last_at is None else (
            last_at if last_in is None else max(last_in, last_at))
        gender = GENDER_TABLE[int(r() * 100)]
        given = GIVEN_NAMES[gender]
        name = SURNAMES[int(r() * r() * len(SURNAMES))] + given[int(r() * len(given))]
        if r() < 0.7:
            name += given[int(r() * len(given))]
        phone = (PHONE_PREFIXES[int(r() * len(PHONE_PREFIXES))] + f"{int(r() * 1e8):08d}"
                 if r() < 0.7 else "")
        ref = pop.referred_by.get(g)
        customers.append((
            cid, ts(jt), updated, external_id(ctx, g), name, phone, gender,
            CITY_TABLE[int(r() * len(CITY_TABLE))], ctx.channel_ids[ch],
            owner_table[int(r() * len(owner_table))],
            None if ref is None else ctx.customer_base + 1 + ref, ts(jt), status,
            ts(status_at), opted, ATTRIBUTES[int(r() * len(ATTRIBUTES))] if r() < 0.6 else EMPTY,
            n_paid, _cents(spent), None if first_at is None else ts(first_at),
            None if last_at is None else ts(last_at),
            None if last_active is None else ts(last_active)))
        events.extend((cid, kind, t, d) for t, kind, d in evs)
    return ChunkPlan(customers, events, orders, items, memberships, personas, event_counts)


@dataclass
class Offsets:
    """The ids already used before a chunk: event, order, order item, membership."""

    event: int = 0
    order: int = 0
    item: int = 0
    membership: int = 0

    def after(self, counts: tuple[int, int, int, int]) -> Offsets:
        return Offsets(self.event + counts[0], self.order + counts[1], self.item + counts[2],
                       self.membership + counts[3])


def chunk_rows(ctx: Context, plan: ChunkPlan, at: Offsets) -> dict[str, list[tuple]]:
    """The chunk's final rows per table, ids given from `at` on, in the sinks' column order."""
    ts = ctx.ts
    eb, ob, ib, mb = at.event, at.order, at.item, at.membership
    days, hms, day0 = ctx.days_str, ctx.hms, ctx.day0
    events = []
    for i, (cid, kind, t, data) in enumerate(plan.events, eb + 1):
        d, sec = divmod(t - day0, DAY)
        s = days[d] + hms[sec]
        events.append((i, cid, kind, s, f"{KEY_PREFIX}{i:012d}", data, s))
    orders = []
    for i, (cid, src, ext, amount, status, t, tr) in enumerate(plan.orders, ob + 1):
        s = ts(t)
        orders.append((i, s, s, cid, src, ext, amount, status, s,
                       None if tr is None else ts(tr)))
    items = [(i, ob + 1 + o, sku, name, cat, qty, price)
             for i, (o, sku, name, cat, qty, price) in enumerate(plan.items, ib + 1)]
    memberships = [(i, gid, cid, ts(tj), None if tl is None else ts(tl))
                   for i, (gid, cid, tj, tl) in enumerate(plan.memberships, mb + 1)]
    return {"customer": plan.customers, "membership": memberships, "order": orders,
            "item": items, "event": events, "eventcount": plan.event_counts}


# Column order of the rows above, by model field name.
COLUMNS = {
    "customer": (Customer, ("id", "created_at", "updated_at", "external_id", "name", "phone",
                            "gender", "city", "channel", "owner", "referred_by", "joined_at",
                            "status", "status_changed_at", "opted_out", "attributes",
                            "orders_count", "total_spent", "first_order_at", "last_order_at",
                            "last_active_at")),
    "membership": (GroupMembership, ("id", "group", "customer", "joined_at", "left_at")),
    "order": (Order, ("id", "created_at", "updated_at", "customer", "source", "external_id",
                      "amount", "status", "placed_at", "refunded_at")),
    "item": (OrderItem, ("id", "order", "sku", "name", "category", "quantity", "price")),
    "event": (Event, ("id", "customer", "type", "occurred_at", "idempotency_key", "data",
                      "received_at")),
    # No id: the table's sequence numbers them.
    "eventcount": (EventCount, ("customer", "type", "total", "since_joined", *LATEST_FIELDS)),
}
MODELS = (Customer, GroupMembership, Order, OrderItem, Event)


def _table_sql(kind: str) -> tuple[str, str]:
    model, names = COLUMNS[kind]
    qn = connection.ops.quote_name
    cols = ", ".join(qn(model._meta.get_field(n).column) for n in names)
    return qn(model._meta.db_table), cols


# --- Sinks ----------------------------------------------------------------------------------

SINK_ORDER = ("customer", "membership", "order", "item", "event", "eventcount")
# One %s per column: %-formatting is the fastest way from tuples to COPY text. None prints as
# "None", which the COPY statements declare as their NULL marker (no generated value is the
# bare word None), and True/False are valid boolean input.
COPY_LINES = {kind: "\t".join(["%s"] * len(COLUMNS[kind][1])) + "\n" for kind in SINK_ORDER}


class CopySink:
    """PostgreSQL: COPY … FROM STDIN per table and chunk. `format` (rows → COPY text) is
    separate from `write` so that worker processes can format while the parent writes."""

    def __init__(self, cursor, *, freeze: list[str] = ()) -> None:
        self.cursor = cursor            # a psycopg2 cursor
        self.sql = {}
        for kind in SINK_ORDER:
            table, cols = _table_sql(kind)
            # FREEZE (allowed after a TRUNCATE in the same transaction) writes the rows as
            # already vacuumed, so no later pass has to set their hint bits.
            opts = ", FREEZE" if COLUMNS[kind][0]._meta.db_table in freeze else ""
            self.sql[kind] = f"COPY {table} ({cols}) FROM STDIN WITH (NULL 'None'{opts})"

    @staticmethod
    def format(rows: dict[str, list[tuple]]) -> dict[str, bytes]:
        out = {}
        for kind in SINK_ORDER:
            line = COPY_LINES[kind]
            out[kind] = "".join([line % row for row in rows[kind]]).encode()
        return out

    def write(self, payload: dict[str, bytes]) -> None:
        for kind in SINK_ORDER:
            if payload[kind]:
                self.cursor.copy_expert(self.sql[kind], io.BytesIO(payload[kind]), size=1 << 20)


class InsertSink:
    """Any other database (SQLite): executemany inside the caller's transaction."""

    def __init__(self, cursor) -> None:
        self.cursor = cursor            # a Django cursor
        self.sql = {}
        for kind in SINK_ORDER:
            table, cols = _table_sql(kind)
            marks = ", ".join(["%s"] * len(COLUMNS[kind][1]))
            self.sql[kind] = f"INSERT INTO {table} ({cols}) VALUES ({marks})"

    @staticmethod
    def format(rows: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
        return rows

    def write(self, payload: dict[str, list[tuple]]) -> None:
        for kind in SINK_ORDER:
            if payload[kind]:
                self.cursor.executemany(self.sql[kind], payload[kind])


# --- Set-up: staff, channels, groups ---------------------------------------------------------

@dataclass
class Login:
    username: str
    role: str
    created: bool                   # only then was the password set to DEMO_PASSWORD


def _ensure_staff(n_operators: int) -> tuple[list, list[Login]]:
    """The demo's staff accounts, created once: an admin, an analyst and the operators."""
    User = get_user_model()
    hashed: list[str] = []
    logins: list[Login] = []

    def ensure(username: str, role: str, **defaults):
        user, created = User.objects.get_or_create(username=username, defaults=defaults)
        if created:
            if not hashed:              # hashing is slow on purpose; the password is public
                hashed.append(make_password(DEMO_PASSWORD))
            user.password = hashed[0]
            user.save(update_fields=["password"])
        user.groups.add(Role.objects.get_or_create(name=role)[0])
        logins.append(Login(username, role, created))
        return user

    ensure("admin", access.ADMIN, is_superuser=True, is_staff=True, first_name="管理员")
    ensure("analyst", access.ANALYST, first_name="分析师")
    operators = []
    for i in range(n_operators):
        pinyin, surname, given = OPERATOR_NAMES[i % len(OPERATOR_NAMES)]
        suffix = "" if i < len(OPERATOR_NAMES) else str(i // len(OPERATOR_NAMES) + 1)
        operators.append(ensure(f"op_{pinyin}{suffix}", access.OPERATOR, last_name=surname,
                                first_name=given))
    return operators, logins


def _ensure_channels(customers: int, since: datetime) -> list[int]:
    referred = customers * 6 // 100
    ids = []
    for code, name, kind, share, cac in CHANNELS:
        acquired = referred if kind == Channel.Kind.REFERRAL else customers * share // 100
        channel, created = Channel.objects.get_or_create(code=code, defaults={
            "name": name, "kind": kind, "cost": max(100, round(acquired * cac, -2)),
            "description": f"{name}（演示数据）"})
        if created:
            Channel.objects.filter(pk=channel.pk).update(created_at=since, updated_at=since)
        ids.append(channel.pk)
    return ids


def _ensure_groups(n: int, seed: int, operators: list, since: datetime) -> tuple[list, list]:
    salt_a, salt_b = _mix("groups-a", seed), _mix("groups-b", seed)
    chat_ids = [f"wr{_b62(_scramble(i, salt_a), 11)}{_b62(_scramble(i, salt_b), 11)}"
                for i in range(n)]
    Group.objects.bulk_create([
        Group(chat_id=chat_id, name=f"{GROUP_THEMES[i % len(GROUP_THEMES)]}{i // 8 + 1}",
              owner=operators[i % len(operators)]) for i, chat_id in enumerate(chat_ids)],
        ignore_conflicts=True, batch_size=1000)
    found = dict(Group.objects.filter(chat_id__in=chat_ids).values_list("chat_id", "id"))
    Group.objects.filter(pk__in=found.values(), created_at__gt=since).update(
        created_at=since, updated_at=since)
    return [found[c] for c in chat_ids], chat_ids


# --- Secondary indexes on PostgreSQL ----------------------------------------------------------

def _secondary_ddl(cursor, tables: list[str]) -> tuple[list[str], list[str]]:
    """(drop, create) statements for the foreign keys, unique constraints and indexes of the
    tables, primary keys aside, exactly as the catalog has them."""
    cursor.execute("""
        SELECT c.conrelid::regclass::text, c.conname, c.contype, pg_get_constraintdef(c.oid)
        FROM pg_constraint c
        WHERE c.conrelid = ANY(%s::regclass[]) AND c.contype IN ('f', 'u')
          AND NOT (c.contype = 'u' AND EXISTS (
              SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = c.conindid))
        ORDER BY c.contype, c.conrelid::regclass::text, c.conname""", [tables])
    constraints = cursor.fetchall()
    cursor.execute("""
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        WHERE i.indrelid = ANY(%s::regclass[]) AND NOT i.indisprimary
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                          WHERE c.conindid = i.indexrelid AND c.contype IN ('p', 'u', 'x'))
        ORDER BY 1""", [tables])
    indexes = cursor.fetchall()
    qn = connection.ops.quote_name
    drop = [f"ALTER TABLE {t} DROP CONSTRAINT {qn(name)}" for t, name, _k, _d in constraints]
    drop += [f"DROP INDEX {name}" for name, _d in indexes]
    create = [ddl for _n, ddl in indexes]
    create += [f"ALTER TABLE {t} ADD CONSTRAINT {qn(name)} {ddl}"
               for t, name, kind, ddl in constraints if kind == "u"]
    create += [f"ALTER TABLE {t} ADD CONSTRAINT {qn(name)} {ddl}"
               for t, name, kind, ddl in constraints if kind == "f"]
    return drop, create


def _truncate_unreferenced(cursor, tables: list[str]) -> list[str]:
    """TRUNCATE those of the (empty) tables that no foreign key points at any more.

    Only after a TRUNCATE in the same transaction does COPY skip the free space map, so that
    rows land in the order they are sent, which makes the index builds cheap (presorted).
    """
    cursor.execute("""
        SELECT t FROM unnest(%s::text[]) AS t
        WHERE NOT EXISTS (SELECT 1 FROM pg_constraint c
                          WHERE c.contype = 'f' AND c.confrelid = t::regclass)""", [tables])
    free = [row[0] for row in cursor.fetchall()]
    if free:
        cursor.execute("TRUNCATE " + ", ".join(connection.ops.quote_name(t) for t in free))
    return free


# --- Running --------------------------------------------------------------------------------

@dataclass
class SeedReport:
    created: dict[str, int] = field(default_factory=dict)    # model name -> rows
    personas: Counter = field(default_factory=Counter)
    logins: list[Login] = field(default_factory=list)
    skipped: bool = False          # demo data was there already
    existing_customers: int = 0
    truncated: list[str] = field(default_factory=list)
    workers: int = 1
    rebuilt: list[tuple[str, float]] = field(default_factory=list)   # (DDL, seconds)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def demo_data_exists() -> bool:
    return Event.objects.filter(idempotency_key__startswith=KEY_PREFIX).exists()


def _kept_per_customer() -> list:
    """Other apps' models that keep rows per customer — a foreign key to Customer, with or
    without a database constraint, or a plain `customer_id` column — apart from the audit log.
    TRUNCATE … CASCADE reaches only those with a constraint; left behind, the others' rows
    would belong to the new customers once ids start at 1 again."""
    from django.apps import apps

    found = []
    for model in apps.get_models():
        if model._meta.app_label == "crm" or model is AuditEntry:
            continue
        if any((f.is_relation and f.related_model is Customer) or f.column == "customer_id"
               for f in model._meta.concrete_fields):
            found.append(model)
    return found


def demo_reset() -> list[str]:
    """Delete crm's data and every other app's rows about its customers (stages, tags,
    enrolments, metric facts); the audit log stays, its entries no longer naming a customer.

    Returns the tables emptied besides crm's own."""
    # The touch queue goes too: touches of deleted customers mean nothing.
    models = (EventCount, Event, OrderItem, Order, GroupMembership, Customer, Group, Channel,
              CustomerTouch)
    others = _kept_per_customer()
    AuditEntry.objects.exclude(customer_id=None).update(customer_id=None)
    if connection.vendor == "postgresql":
        tables = ", ".join(connection.ops.quote_name(m._meta.db_table)
                           for m in (*models, *others))
        with connection.cursor() as cursor:
            notices = cursor.connection.notices      # psycopg2 keeps the last 50 only
            notices.clear()
            # TRUNCATE refuses tables with deferred checks pending in this transaction.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
            cascaded = [n.split("truncate cascades to table ", 1)[1].strip().strip('"')
                        for n in notices if "truncate cascades to table " in n]
            return sorted({*cascaded, *(m._meta.db_table for m in others)})
    with transaction.atomic():
        for model in (*others, *models):
            model.objects.all().delete()
        if connection.vendor != "sqlite":
            return []
        with connection.cursor() as cursor:     # ids start at 1 again, as after TRUNCATE
            marks = ", ".join(["%s"] * len(models))
            cursor.execute(f"DELETE FROM sqlite_sequence WHERE name IN ({marks})",
                           [m._meta.db_table for m in models])
    return []


def _max_ids() -> tuple[int, Offsets]:
    def top(model) -> int:
        return model.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    return top(Customer), Offsets(top(Event), top(Order), top(OrderItem), top(GroupMembership))


def seed_demo(*, customers: int, seed: int = 1, days: int = 365, reset: bool = False,
              now: datetime | None = None, workers: int | None = None,
              rebuild_indexes: bool | None = None, progress=None) -> SeedReport:
    """Make `customers` demo customers with `days` of history ending at `now` (default: the
    start of today, local time, so that a seed gives the same data all day).

    Adds nothing when demo data is there already (unless `reset`). Everything is stored in
    one transaction. On PostgreSQL, `workers` processes generate the rows (default: 2 from
    50k customers on) and, when crm's tables start empty, their secondary indexes and foreign
    keys are dropped and rebuilt after the load (`rebuild_indexes`, default: from 50k
    customers on). `progress(done, total)` is called as chunks are stored.
    """
    started = time.monotonic()
    report = SeedReport()
    if reset:
        report.truncated = demo_reset()
    n_operators = max(4, min(len(OPERATOR_NAMES), customers // 25_000))
    operators, report.logins = _ensure_staff(n_operators)
    if demo_data_exists():
        report.skipped = True
        report.existing_customers = Customer.objects.count()
        report.seconds = time.monotonic() - started
        return report
    if now is None:
        now = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    since = now - timedelta(days=days + 30)
    pg = connection.vendor == "postgresql"
    if workers is None:
        workers = 2 if customers >= 50_000 else 1
    report.workers = max(1, workers) if pg else 1
    with transaction.atomic():
        channel_ids = _ensure_channels(customers, since)
        group_ids, chat_ids = _ensure_groups(max(3, customers // GROUP_SIZE), seed, operators,
                                             since)
        customer_base, base = _max_ids()
        ctx = Context(
            seed=seed, customers=customers, days=days, anchor=int(now.timestamp()),
            tz_offset=int(timezone.localtime(now).utcoffset().total_seconds()),
            customer_base=customer_base, channel_ids=channel_ids,
            owner_ids=[u.pk for u in operators],
            owner_weights=[1 + (i * 7) % 4 for i in range(len(operators))],
            group_ids=group_ids, group_chat_ids=chat_ids)
        ctx.population = population(ctx)
        report.timings["setup"] = time.monotonic() - started
        if rebuild_indexes is None:
            rebuild_indexes = customers >= 50_000
        # The per-customer event counts are stored with the events (chunk_rows), not
        # recounted from them afterwards (120 s at 1M).
        _store(ctx, base, report, progress, rebuild_indexes=rebuild_indexes)
        t = time.monotonic()
    report.timings["commit"] = time.monotonic() - t     # deferred foreign-key checks run here
    t = time.monotonic()
    if pg:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE " + ", ".join(
                connection.ops.quote_name(m._meta.db_table)
                for m in MODELS + (Group, Channel, EventCount)))
    report.timings["analyze"] = time.monotonic() - t
    report.created["Channel"] = len(channel_ids)
    report.created["Group"] = len(group_ids)
    report.seconds = time.monotonic() - started
    logger.info("crm.demo_seeded", extra={"customers": customers, "seed": seed,
                                          "seconds": round(report.seconds, 1)})
    return report


def _store(ctx: Context, base: Offsets, report: SeedReport, progress, *,
           rebuild_indexes: bool) -> None:
    """Generate and store every chunk, inside the caller's transaction."""
    started = time.monotonic()
    pg = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        rebuild: list[str] = []
        if pg:
            cursor.execute("SET LOCAL TIME ZONE 'UTC'")
            # Measured on 10M events: index builds sort faster in 64MB runs than in 1GB.
            cursor.execute("SET LOCAL maintenance_work_mem = '64MB'")
            cursor.execute("SET LOCAL work_mem = '256MB'")
            # An index build's scan must start at block 0, not where the last scan of the
            # table stopped, or the presorted heap reaches the sort rotated.
            cursor.execute("SET LOCAL synchronize_seqscans = off")
            # Every new customer is touched once (crm 0019), by crm_customer's trigger; their
            # other rows would touch them again, millions of times: those triggers wait.
            quiet = [connection.ops.quote_name(m._meta.db_table)
                     for m in (GroupMembership, Order, OrderItem, EventCount)]
            # ALTER TABLE refuses tables with pending deferred checks (the groups).
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for table in quiet:
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
            freeze: list[str] = []
            if rebuild_indexes and not (ctx.customer_base or any(vars(base).values())):
                tables = [m._meta.db_table for m in (*MODELS, EventCount)]
                drop, rebuild = _secondary_ddl(cursor, tables)
                # ALTER TABLE refuses tables with pending deferred checks (the groups).
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                for sql in drop:
                    cursor.execute(sql)
                freeze = _truncate_unreferenced(cursor, tables)
            sink = CopySink(cursor.cursor, freeze=freeze)
        else:
            sink = InsertSink(cursor)
        chunks = (_chunks_parallel(ctx, base, report.workers, sink.format)
                  if report.workers > 1 else _chunks_inline(ctx, base, sink.format))
        done, waited, written = 0, 0.0, 0.0
        t_wait = time.monotonic()
        for counts, n, personas, payload in chunks:
            t_write = time.monotonic()
            waited += t_write - t_wait
            sink.write(payload)
            t_wait = time.monotonic()
            written += t_wait - t_write
            _tally(report, counts, n, personas)
            done += n
            if progress:
                progress(done, ctx.customers)
        t = time.monotonic()
        report.timings.update(load=t - started, wait=waited, write=written)
        for sql in rebuild:
            t_sql = time.monotonic()
            cursor.execute(sql)
            report.rebuilt.append((sql, time.monotonic() - t_sql))
        report.timings["indexes"] = time.monotonic() - t
        for sql in connection.ops.sequence_reset_sql(no_style(), MODELS):
            cursor.execute(sql)
        if pg:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for table in quiet:
                cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def _tally(report: SeedReport, counts, n_customers: int, personas: Counter) -> None:
    for name, n in zip(("Customer", "Event", "Order", "OrderItem", "GroupMembership"),
                       (n_customers, *counts), strict=True):
        report.created[name] = report.created.get(name, 0) + n
    report.personas.update(personas)


def _chunks_inline(ctx: Context, base: Offsets, fmt):
    """(counts, customers, personas, payload) per chunk, in chunk order, in this process."""
    at = base
    for k in range(ctx.n_chunks):
        gc.disable()
        try:
            plan = chunk_plan(ctx, k)
            payload = fmt(chunk_rows(ctx, plan, at))
        finally:
            gc.enable()
        yield plan.counts(), len(plan.customers), plan.personas, payload
        at = at.after(plan.counts())


def _chunks_parallel(ctx: Context, base: Offsets, workers: int, fmt):
    """The same as `_chunks_inline`, made by `workers` forked processes.

    Chunk k goes to worker k mod workers. A worker plans its chunk, publishes the chunk's row
    counts, waits for those of every earlier chunk (planned meanwhile by the others) to know
    where its ids start, then formats the rows. The parent takes the chunks in order; a
    semaphore bounds how far the workers run ahead. Workers never touch the database.
    """
    mp = multiprocessing.get_context("fork")
    n = ctx.n_chunks
    counts = mp.Array("q", 4 * n, lock=False)
    ready = mp.Array("b", n, lock=False)
    abort = mp.Value("b", 0, lock=False)
    cond = mp.Condition()
    room = mp.Semaphore(2 * workers + 2)
    results = mp.Queue()
    procs = [mp.Process(target=_worker, daemon=True, args=(
        ctx, w, workers, base, fmt, counts, ready, abort, cond, room, results))
        for w in range(workers)]
    for proc in procs:
        proc.start()
    pending: dict[int, tuple] = {}
    try:
        for k in range(n):
            while k not in pending:
                try:
                    msg = results.get(timeout=5)
                except Exception:          # queue.Empty: check that the workers still live
                    if any(p.exitcode not in (None, 0) for p in procs):
                        raise RuntimeError("seed_demo: a worker process died") from None
                    continue
                if msg[0] == "error":
                    raise RuntimeError(f"seed_demo worker failed:\n{msg[1]}")
                pending[msg[0]] = msg[1:]
            yield pending.pop(k)
            room.release()
    finally:
        abort.value = 1
        with cond:
            cond.notify_all()
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()


def _worker(ctx, w, workers, base, fmt, counts, ready, abort, cond, room, results) -> None:
    """Runs in a forked process; see `_chunks_parallel`. Must not use the inherited database
    connection (it belongs to the parent's transaction), and does not."""
    import traceback

    gc.disable()                       # millions of short-lived tuples, no cycles
    # The database backend is the serial part of the pipeline: let it have the CPU first.
    os.nice(10)
    try:
        for k in range(w, ctx.n_chunks, workers):
            while not room.acquire(timeout=1):
                if abort.value:
                    return
            plan = chunk_plan(ctx, k)
            mine = plan.counts()
            with cond:
                counts[4 * k:4 * k + 4] = mine
                ready[k] = 1
                cond.notify_all()
                while not abort.value and not all(ready[:k]):
                    cond.wait(1.0)
            if abort.value:
                return
            at = base.after(tuple(sum(counts[4 * j + c] for j in range(k)) for c in range(4)))
            results.put((k, mine, len(plan.customers), plan.personas,
                         fmt(chunk_rows(ctx, plan, at))))
    except BaseException:
        abort.value = 1
        results.put(("error", traceback.format_exc()))
