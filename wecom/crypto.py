"""WeCom's callback encryption (WXBizMsgCrypt) on the maintained `cryptography` package.

AES-256-CBC with IV = key[:16], PKCS#7 padding to 32 bytes, plaintext
`random(16) + len(msg) (4 bytes, big-endian) + msg + receiveid`, and a SHA-1 signature over the
sorted [token, timestamp, nonce, encrypt]. Unlike Tencent's sample it compares signatures in
constant time, draws the random prefix from `secrets` and validates the padding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK_SIZE = 32          # WeCom pads to 32 bytes, not AES's 16


class WeComCryptoError(Exception):
    """A callback that cannot be trusted or read; the message says why."""


class ConfigError(WeComCryptoError):
    """The EncodingAESKey (or another setting) is not usable."""


class SignatureError(WeComCryptoError):
    """msg_signature does not match."""


class DecryptError(WeComCryptoError):
    """The ciphertext is not valid base64, not block-aligned, badly padded or malformed."""


class ReceiveIdError(WeComCryptoError):
    """The message was encrypted for another corp (receiveid ≠ our corp id)."""


def _key(encoding_aes_key: str) -> bytes:
    if len(encoding_aes_key) != 43:
        raise ConfigError("EncodingAESKey must be 43 characters")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError("EncodingAESKey is not base64") from exc
    if len(key) != 32:
        raise ConfigError("EncodingAESKey must decode to 32 bytes")
    return key


def sign(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    joined = "".join(sorted([token, timestamp, nonce, encrypt]))
    # SHA-1 is WeCom's protocol (msg_signature), not a choice made here.
    return hashlib.sha1(joined.encode()).hexdigest()  # nosec B324


class WXBizMsgCrypt:
    def __init__(self, *, token: str, encoding_aes_key: str, receive_id: str) -> None:
        if not token or not receive_id:
            raise ConfigError("token and receive id are required")
        self.token = token
        self.key = _key(encoding_aes_key)
        self.receive_id = receive_id

    # --- signatures --------------------------------------------------------------------------

    def signature(self, timestamp: str, nonce: str, encrypt: str) -> str:
        return sign(self.token, timestamp, nonce, encrypt)

    def check_signature(self, signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        expected = self.signature(timestamp, nonce, encrypt)
        if not hmac.compare_digest(expected.encode(), (signature or "").lower().encode()):
            raise SignatureError("msg_signature does not match")

    # --- cipher ------------------------------------------------------------------------------

    def _cipher(self) -> Cipher:
        return Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16]))

    def encrypt(self, text: str, *, prefix: bytes | None = None) -> str:
        """base64(AES-CBC(random16 + len + msg + receiveid, PKCS#7/32))."""
        msg = text.encode()
        plain = ((prefix if prefix is not None else secrets.token_bytes(16))
                 + struct.pack(">I", len(msg)) + msg + self.receive_id.encode())
        pad = BLOCK_SIZE - len(plain) % BLOCK_SIZE
        plain += bytes([pad]) * pad
        encryptor = self._cipher().encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()

    def decrypt(self, encrypt: str) -> str:
        """The message inside `encrypt`, after checking padding, length and receiveid."""
        try:
            data = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecryptError("ciphertext is not base64") from exc
        if not data or len(data) % 16:
            raise DecryptError("ciphertext is not a whole number of AES blocks")
        decryptor = self._cipher().decryptor()
        plain = decryptor.update(data) + decryptor.finalize()
        pad = plain[-1]
        if not 1 <= pad <= BLOCK_SIZE or plain[-pad:] != bytes([pad]) * pad:
            raise DecryptError("bad padding")
        content = plain[16:-pad]
        if len(content) < 4:
            raise DecryptError("plaintext too short")
        (length,) = struct.unpack(">I", content[:4])
        if length > len(content) - 4:
            raise DecryptError("message length exceeds the plaintext")
        msg, receive_id = content[4:4 + length], content[4 + length:]
        if not hmac.compare_digest(receive_id, self.receive_id.encode()):
            raise ReceiveIdError("receiveid does not match the corp id")
        try:
            return msg.decode()
        except UnicodeDecodeError as exc:
            raise DecryptError("message is not UTF-8") from exc

    # --- the two callback operations -------------------------------------------------------

    def verify_url(self, signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """GET URL verification: the echostr's plaintext, to answer as it is."""
        self.check_signature(signature, timestamp, nonce, echostr)
        return self.decrypt(echostr)

    def decrypt_message(self, signature: str, timestamp: str, nonce: str, encrypt: str) -> str:
        """POST: the message XML inside the body's `Encrypt`."""
        self.check_signature(signature, timestamp, nonce, encrypt)
        return self.decrypt(encrypt)

    def encrypt_message(self, text: str, timestamp: str, nonce: str) -> tuple[str, str]:
        """(encrypt, msg_signature) for `text`: what WeCom sends, or a passive reply."""
        encrypt = self.encrypt(text)
        return encrypt, self.signature(timestamp, nonce, encrypt)
