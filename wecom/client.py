"""The WeCom server API: one client with the access token cached (the shared "wecom" cache:
Redis, else files), refreshed when WeCom says it expired, and backoff when WeCom says "too often".

Every call answers the JSON body with `errcode` 0 or raises `WeComError`; callers record a
failure per item and go on. See docs/WECOM.md for the endpoints used."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests
from django.conf import settings
from django.core.cache import caches
from django.utils import timezone

logger = logging.getLogger(__name__)

TOKEN_INVALID = {40001, 40014, 41001, 42001}   # invalid, missing or expired access token
RATE_LIMITED = {-1, 45009, 45033, 45035}       # system busy, frequency and concurrency limits
STATE_KEY = "wecom:state"                      # what the settings page shows


def _cache():
    """The cache every process shares (settings.CACHES["wecom"]): the token and the state."""
    return caches["wecom"]


class WeComError(Exception):
    def __init__(self, errcode: int, errmsg: str, *, path: str = "") -> None:
        super().__init__(f"{path}: {errcode} {errmsg}" if path else f"{errcode} {errmsg}")
        self.errcode, self.errmsg, self.path = errcode, errmsg, path


def api_enabled() -> bool:
    return bool(settings.WECOM_CORP_ID and settings.WECOM_SECRET)


STATE_FIELDS = ("token_at", "last_call_at", "last_error")


def _record(**values: Any) -> None:
    _cache().set_many({f"{STATE_KEY}:{name}": value for name, value in values.items()},
                      timeout=None)


def _record_error(exc: WeComError) -> None:
    _record(last_error={"code": exc.errcode, "message": exc.errmsg, "path": exc.path,
                        "at": timezone.now().isoformat()})


def connection_state() -> dict[str, Any]:
    """`token_at` (when a token was last obtained), `last_call_at`, `last_error`
    ({code, message, path, at}) — kept in the shared cache by the client."""
    found = _cache().get_many([f"{STATE_KEY}:{name}" for name in STATE_FIELDS])
    return {key.rsplit(":", 1)[1]: value for key, value in found.items()}


class WeComClient:
    def __init__(self, *, corp_id: str, secret: str, base_url: str,
                 session: requests.Session | None = None, max_retries: int = 5,
                 backoff_seconds: float = 1.0, timeout: float = 20.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.corp_id, self.secret = corp_id, secret
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.session = session or requests.Session()
        self.max_retries, self.backoff_seconds = max_retries, backoff_seconds
        self.timeout, self.sleep = timeout, sleep
        digest = hashlib.sha256(f"{corp_id}\x1f{secret}".encode()).hexdigest()[:16]
        self.token_key = f"wecom:token:{digest}"

    # --- token ---------------------------------------------------------------------------

    def token(self, *, refresh: bool = False) -> str:
        if not refresh:
            token = _cache().get(self.token_key)
            if token:
                return token
        try:
            data = self._request("GET", "gettoken",
                                 {"corpid": self.corp_id, "corpsecret": self.secret}, None)
        except WeComError as exc:
            _record_error(exc)
            raise
        token = data["access_token"]
        expires = int(data.get("expires_in") or 7200)
        # Renewed a little before WeCom's expiry; WeCom may still end it early (then 42001).
        _cache().set(self.token_key, token, timeout=max(60, expires - 300))
        _record(token_at=timezone.now().isoformat())
        logger.info("wecom.token_obtained", extra={"expires_in": expires})
        return token

    # --- calls ---------------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self.call("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", path, body=body)

    def call(self, method: str, path: str, *, params: dict | None = None,
             body: dict | None = None) -> dict[str, Any]:
        refreshed = False
        attempt = 0
        while True:
            query = {**(params or {}), "access_token": self.token(refresh=refreshed)}
            try:
                return self._request(method, path, query, body)
            except WeComError as exc:
                if exc.errcode in TOKEN_INVALID and not refreshed:
                    refreshed = True        # once: a second refusal is a wrong secret
                    continue
                if exc.errcode in RATE_LIMITED and attempt < self.max_retries:
                    delay = self.backoff_seconds * (2 ** attempt)
                    attempt += 1
                    logger.warning("wecom.rate_limited", extra={
                        "path": path, "errcode": exc.errcode, "retry_in": delay})
                    self.sleep(delay)
                    continue
                _record_error(exc)
                raise

    def _request(self, method: str, path: str, query: dict, body: dict | None) -> dict:
        url = self.base_url + path
        try:
            response = self.session.request(method, url, params=query, json=body,
                                            timeout=self.timeout)
            data = response.json()
        except (requests.RequestException, ValueError) as exc:
            # Unreachable or not JSON: like "system busy", retried with backoff by call().
            raise WeComError(-1, f"{type(exc).__name__}: {exc}"[:300], path=path) from exc
        if not isinstance(data, dict):
            raise WeComError(-1, "answer is not a JSON object", path=path)
        errcode = int(data.get("errcode") or 0)
        if errcode:
            raise WeComError(errcode, str(data.get("errmsg", "")), path=path)
        _record(last_call_at=timezone.now().isoformat())
        return data

    def pages(self, path: str, body: dict[str, Any], *, cursor: str = "",
              items: str) -> Iterator[tuple[list, str]]:
        """(items, next_cursor) page by page from `cursor` on, until WeCom gives no cursor."""
        while True:
            data = self.post(path, {**body, "cursor": cursor})
            cursor = data.get("next_cursor") or ""
            yield data.get(items) or [], cursor
            if not cursor:
                return


def client() -> WeComClient:
    return WeComClient(corp_id=settings.WECOM_CORP_ID, secret=settings.WECOM_SECRET,
                       base_url=settings.WECOM_API_BASE,
                       backoff_seconds=getattr(settings, "WECOM_BACKOFF_SECONDS", 1.0))
