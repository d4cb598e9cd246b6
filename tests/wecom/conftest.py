"""WeCom test settings: Tencent's sample corp (callback/Sample.py of sbzhu/weworkapi_python)."""

import pytest

TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"
AES_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
CORP_ID = "ww1436e0e65a779aee"


@pytest.fixture
def wecom_settings(settings):
    settings.WECOM_CORP_ID = CORP_ID
    settings.WECOM_TOKEN = TOKEN
    settings.WECOM_ENCODING_AES_KEY = AES_KEY
    settings.WECOM_SECRET = "secret"
    return settings
