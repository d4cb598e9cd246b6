"""WXBizMsgCrypt against Tencent's published vectors, and round trips."""

import base64

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.wecom.conftest import AES_KEY, CORP_ID, TOKEN
from wecom.crypto import (
    ConfigError,
    DecryptError,
    ReceiveIdError,
    SignatureError,
    WXBizMsgCrypt,
)

GET_SIG, GET_TS, GET_NONCE = "012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb", "1476416373", "47744683"
ECHOSTR = ("fsi1xnbH4yQh0+PJxcOdhhK6TDXkjMyhEPA7xB2TGz6b+g7xyAbEkRxN/3cNXW9qdqjnoVzEtpbhnFyq6SVHyA==")
POST_SIG, POST_TS, POST_NONCE = ("0c3914025cb4b4d68103f6bfc8db550f79dcf48e", "1476422779",
                                 "1597212914")
POST_ENCRYPT = (
    "Kl7kjoSf6DMD1zh7rtrHjFaDapSCkaOnwu3bqLc5tAybhhMl9pFeK8NslNPVdMwmBQTNoW4mY7AIjeLvEl3NyeTkAg"
    "GzBhzTtRLNshw2AEew+kkYcD+Fq72Kt00fT0WnN87hGrW8SqGc+NcT3mu87Ha3dz1pSDi6GaUA6A0sqfde0VJPQbZ9"
    "U+3JWcoD4Z5jaU0y9GSh010wsHF8KZD24YhmZH4ch4Ka7ilEbjbfvhKkNL65HHL0J6EYJIZUC2pFrdkJ7MhmEbU2qA"
    "RR4iQHE7wy24qy0cRX3Mfp6iELcDNfSsPGjUQVDGxQDCWjayJOpcwocugux082f49HKYg84EpHSGXAyh+/oxwaWbvL"
    "6aSDPOYuPDGOCI8jmnKiypE+")


@pytest.fixture
def crypt():
    return WXBizMsgCrypt(token=TOKEN, encoding_aes_key=AES_KEY, receive_id=CORP_ID)


def test_tencent_get_vector(crypt):
    assert crypt.signature(GET_TS, GET_NONCE, ECHOSTR) == GET_SIG
    assert crypt.verify_url(GET_SIG, GET_TS, GET_NONCE, ECHOSTR) == "1288432023552776189"


def test_tencent_post_vector(crypt):
    assert crypt.signature(POST_TS, POST_NONCE, POST_ENCRYPT) == POST_SIG
    xml = crypt.decrypt_message(POST_SIG, POST_TS, POST_NONCE, POST_ENCRYPT)
    assert xml == (
        "<xml><ToUserName>ww1436e0e65a779aee</ToUserName><FromUserName>ChenJiaShun"
        "</FromUserName><CreateTime>1476422779</CreateTime><MsgType>text</MsgType>"
        "<Content>你好</Content><MsgId>1456453720</MsgId><AgentID>1000002</AgentID></xml>")


def test_bad_signature_refused(crypt):
    with pytest.raises(SignatureError):
        crypt.verify_url("0" * 40, GET_TS, GET_NONCE, ECHOSTR)
    with pytest.raises(SignatureError):
        crypt.decrypt_message(POST_SIG, POST_TS, "1597212915", POST_ENCRYPT)


def test_round_trip(crypt):
    text = "<xml><Content><![CDATA[你好, 世界]]></Content></xml>" * 7
    encrypt, signature = crypt.encrypt_message(text, "1700000000", "n1")
    assert crypt.decrypt_message(signature, "1700000000", "n1", encrypt) == text
    # the random prefix makes each ciphertext different
    assert crypt.encrypt(text) != crypt.encrypt(text)
    # a whole block of padding (plaintext already a multiple of 32)
    assert crypt.decrypt(crypt.encrypt("x" * (64 - 16 - 4 - len(CORP_ID)))) == "x" * (
        64 - 16 - 4 - len(CORP_ID))


def _raw_encrypt(plain: bytes) -> str:
    key = base64.b64decode(AES_KEY + "=")
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(plain) + enc.finalize()).decode()


@pytest.mark.parametrize("tail", [bytes([0]) * 32, bytes([33]) * 32, bytes([3, 3, 4, 3])[-4:]])
def test_bad_padding_refused(crypt, tail):
    body = b"r" * 16 + (5).to_bytes(4, "big") + b"hello" + CORP_ID.encode()
    plain = body + b"z" * (-(len(body) + len(tail)) % 32) + tail
    assert len(plain) % 32 == 0
    with pytest.raises(DecryptError):
        crypt.decrypt(_raw_encrypt(plain))


def test_length_beyond_plaintext_refused(crypt):
    body = b"r" * 16 + (9999).to_bytes(4, "big") + b"hello" + CORP_ID.encode()
    pad = 32 - len(body) % 32
    with pytest.raises(DecryptError):
        crypt.decrypt(_raw_encrypt(body + bytes([pad]) * pad))


def test_other_corp_refused(crypt):
    other = WXBizMsgCrypt(token=TOKEN, encoding_aes_key=AES_KEY, receive_id="wwotherco")
    with pytest.raises(ReceiveIdError):
        crypt.decrypt(other.encrypt("<xml/>"))


@pytest.mark.parametrize("value", ["not base64!", "", base64.b64encode(b"short").decode()])
def test_garbage_ciphertext_refused(crypt, value):
    with pytest.raises(DecryptError):
        crypt.decrypt(value)


def test_bad_key_refused():
    with pytest.raises(ConfigError):
        WXBizMsgCrypt(token=TOKEN, encoding_aes_key="short", receive_id=CORP_ID)
