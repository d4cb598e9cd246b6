"""Default SOPs from seed 001 (value lifecycle) and seed 000 (decision journey): editable data.
Nothing promotional reaches journey `interest` or value `intro` (the stage guard)."""

import datetime

from django.db import migrations

HELLO = "{{ name }}您好，我是{{ owner.name }}"
SOPS = [
    # (model, stage, name, goal, steps: (order, delay_minutes, day, at, channel, category, text))
    ("value", "intro", "引入期 · 欢迎与新人福利", None, [
        (1, 5, None, None, "wecom", "service",
         HELLO + "，欢迎来到我们的私域～以后产品使用、售后、搭配有任何问题都可以直接找我。"),
        (2, 0, 1, datetime.time(10, 0), "wecom", "content",
         "给{{ name }}准备了一份新人专享礼：首单可领取新人券，回复「新人礼」我来帮您领取。"),
        (3, 0, 3, datetime.time(20, 0), "wecom", "content",
         "和您分享一下我们的品牌故事：从一家小小的门店开始，我们只做自己也愿意天天用的产品。"),
    ]),
    ("value", "growth", "成长期 · 个性化推荐", None, [
        (1, 0, 2, datetime.time(19, 30), "wecom", "promotional",
         "{{ name }}，{% if categories %}看您喜欢{{ categories|join:'、' }}，{% endif %}"
         "这几款口碑很好的新品很适合您，会员价本周有效，需要我帮您留一份吗？"),
        (2, 0, 7, datetime.time(20, 0), "wecom", "content",
         "用得怎么样？这里有一份使用小技巧，搭配着用效果更好～"),
    ]),
    ("value", "mature", "成熟期 · 会员权益与满意度", None, [
        (1, 60, None, None, "manual", "service",
         "高价值客户 1 对 1 回访：感谢{{ name }}的长期支持，了解最近的使用感受与需求。"),
        (2, 0, 1, datetime.time(11, 0), "wecom", "content",
         "{{ name }}，您已升级为我们的老朋友：专属客服、生日礼、新品优先体验都已为您开通。"),
        (3, 0, 5, datetime.time(19, 0), "wecom", "service",
         "想听听您的意见：用 1 分钟填一下满意度问卷，帮我们做得更好，感谢！"),
    ]),
    ("value", "dormant", "休眠期 · 关怀与限时券", {"field": "order", "op": "count_gte",
                                                "value": 1, "within_days": 14}, [
        (1, 0, 1, datetime.time(19, 0), "wecom", "service",
         "{{ name }}，好久没和您聊天了，最近还好吗？之前的产品用得顺手吗，有任何问题随时找我。"),
        (2, 0, 3, datetime.time(19, 30), "wecom", "promotional",
         "给老朋友留了一张限时回归券，3 天内有效，回复「回归」就能领取～"),
    ]),
    ("value", "churn", "流失期 · 反馈收集", None, [
        (1, 0, 1, datetime.time(10, 0), "sms", "service",
         "【品牌】{{ name }}您好，我们很想知道哪里做得不够好，回复本短信或点链接告诉我们，"
         "感谢您曾经的陪伴。"),
        (2, 0, 3, datetime.time(10, 0), "email", "service",
         "我们想听听您的意见\n{{ name }}您好，您的反馈会直接交到产品团队手里，"
         "欢迎回信告诉我们您的想法。"),
    ]),
    ("journey", "interest", "兴趣 · 先建立信任", None, [
        (1, 10, None, None, "wecom", "service",
         HELLO + "，很高兴认识您！不着急买，先了解，有问题随时问我。"),
        (2, 0, 2, datetime.time(20, 0), "wecom", "content",
         "分享一个我们的小故事和大家最常问的 3 个问题，帮您更了解我们。"),
    ]),
    ("journey", "trust", "信任 · 内容种草", None, [
        (1, 0, 1, datetime.time(20, 0), "wecom", "content",
         "这周群里大家在聊的好物清单整理给您，挑您感兴趣的看看～"),
    ]),
    ("journey", "purchase", "购买 · 售后关怀", None, [
        (1, 0, 1, datetime.time(19, 0), "wecom", "service",
         "{{ name }}，您的订单收到了吗？第一次使用有任何疑问都可以问我。"),
        (2, 0, 7, datetime.time(20, 0), "wecom", "service",
         "用了一周感觉怎么样？欢迎把使用感受发给我，我们会认真看每一条。"),
    ]),
    ("journey", "advocacy", "口碑 · 老带新", None, [
        (1, 0, 2, datetime.time(20, 0), "wecom", "content",
         "谢谢{{ name }}的推荐！邀请好友加入，您和好友都能获得一份专属礼物。"),
    ]),
]


def create(apps, schema_editor):
    Sop = apps.get_model("campaigns", "Sop")
    SopStep = apps.get_model("campaigns", "SopStep")
    Stage = apps.get_model("lifecycle", "Stage")
    for model_key, stage_key, name, goal, steps in SOPS:
        stage = Stage.objects.filter(model__key=model_key, key=stage_key).first()
        if stage is None or Sop.objects.filter(stage=stage, name=name).exists():
            continue
        sop = Sop.objects.create(name=name, model_id=stage.model_id, stage=stage, goal=goal,
                                 active=True, built_in=True)
        for order, delay, day, at, channel, category, text in steps:
            SopStep.objects.create(sop=sop, order=order, delay_minutes=delay, day=day,
                                   at_time=at, channel=channel, category=category,
                                   template=text)


def drop(apps, schema_editor):
    apps.get_model("campaigns", "Sop").objects.filter(built_in=True).delete()


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0001_initial"), ("lifecycle", "0002_builtin_models")]
    operations = [migrations.RunPython(create, drop)]
