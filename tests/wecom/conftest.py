"""WeCom test settings: Tencent's sample corp (callback/Sample.py of sbzhu/weworkapi_python), and
the project's fake WeCom server over real HTTP."""

import pytest

from campaigns.backends import reset_backends
from wecom.fake import FakeWeCom

TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"
AES_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
CORP_ID = "ww1436e0e65a779aee"
SECRET = "s3cret"


@pytest.fixture
def wecom_settings(settings):
    settings.WECOM_CORP_ID = CORP_ID
    settings.WECOM_TOKEN = TOKEN
    settings.WECOM_ENCODING_AES_KEY = AES_KEY
    settings.WECOM_SECRET = "secret"
    return settings


@pytest.fixture
def fake(settings):
    """A fake WeCom on a free port, and the settings pointing at it (no backoff waits)."""
    server = FakeWeCom(corp_id=CORP_ID, secret=SECRET, token=TOKEN, encoding_aes_key=AES_KEY,
                       agent_id="1000002")
    server.start()
    settings.WECOM_CORP_ID = CORP_ID
    settings.WECOM_SECRET = SECRET
    settings.WECOM_TOKEN = TOKEN
    settings.WECOM_ENCODING_AES_KEY = AES_KEY
    settings.WECOM_API_BASE = server.base_url
    settings.WECOM_BACKOFF_SECONDS = 0
    settings.WECOM_AGENT_ID = "1000002"
    settings.OUTREACH_BACKENDS = {**settings.OUTREACH_BACKENDS,
                                  "wecom": "wecom.backends.WeComBackend"}
    reset_backends()
    yield server
    server.stop()
    reset_backends()
