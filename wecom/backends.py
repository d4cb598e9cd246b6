"""The `wecom` outreach channel through WeCom: 1-to-1 mass sends (`add_msg_template`) from the
customer's owner, which the owner confirms in the WeCom client — so the messages wait as
`submitted` until `wecom.mass_sends.mass_sends_poll` reads WeCom's results."""

from __future__ import annotations

import logging
from collections import defaultdict

from django.conf import settings

from campaigns.backends import ChannelBackend, SendResult
from campaigns.models import Message
from wecom.client import RATE_LIMITED, WeComError, client
from wecom.models import MassSend

logger = logging.getLogger(__name__)

RECIPIENTS_PER_CALL = 10_000    # add_msg_template's limit on external_userid
TEXT_MAX_BYTES = 4000


class WeComBackend(ChannelBackend):
    @property
    def daily_quota(self) -> int:
        return settings.WECOM_MASS_SEND_DAILY_QUOTA

    def send(self, message) -> SendResult:
        return self.send_many([message])[0]

    def send_many(self, messages: list) -> list[SendResult]:
        """One mass send per (owner, text), chunked at WeCom's per-call limit. A customer that
        is not the owner's contact (WeCom's fail_list) is skipped with that reason."""
        results: dict[int, SendResult] = {}
        batches: dict[tuple[str, str], list] = defaultdict(list)
        for m in messages:
            owner = m.customer.owner.get_username() if m.customer.owner_id else ""
            if not owner:
                results[m.pk] = SendResult(ok=False, error="the customer has no owner to send")
            elif len(m.content.encode()) > TEXT_MAX_BYTES:
                results[m.pk] = SendResult(
                    ok=False, error=f"the text is longer than WeCom's {TEXT_MAX_BYTES} bytes")
            else:
                batches[(owner, m.content)].append(m)
        api = client() if batches else None
        for (owner, content), batch in batches.items():
            for start in range(0, len(batch), RECIPIENTS_PER_CALL):
                chunk = batch[start:start + RECIPIENTS_PER_CALL]
                results.update(self._submit(api, owner, content, chunk))
        return [results[m.pk] for m in messages]

    def _submit(self, api, owner: str, content: str, chunk: list) -> dict[int, SendResult]:
        body = {"chat_type": "single", "sender": owner, "allow_select": False,
                "external_userid": [m.customer.external_id for m in chunk],
                "text": {"content": content}}
        try:
            answer = api.post("externalcontact/add_msg_template", body)
        except WeComError as exc:
            error = f"WeCom {exc.errcode}: {exc.errmsg}"[:500]
            transient = exc.errcode in RATE_LIMITED
            return {m.pk: SendResult(ok=False, transient=transient, error=error) for m in chunk}
        msgid = str(answer.get("msgid") or "")
        refused = set(answer.get("fail_list") or [])
        if msgid:
            MassSend.objects.get_or_create(msgid=msgid, defaults={
                "kind": MassSend.Kind.SINGLE, "sender": owner, "content": content,
                "recipients": len(chunk) - len(refused)})
        logger.info("wecom.mass_send_submitted", extra={
            "msgid": msgid, "sender": owner, "recipients": len(chunk), "refused": len(refused)})
        return {m.pk: (SendResult(ok=False, skip_reason=Message.SkipReason.NOT_A_FRIEND,
                                  error="not a contact of the sender (WeCom fail_list)")
                       if m.customer.external_id in refused
                       else SendResult(ok=True, submitted=True, provider_id=msgid))
                for m in chunk}
