"""DC-09 AES-CBC with a zero IV and the random front pad (PROTOCOLS.md §1.12).

A key is built once (:class:`AesKey`) and reused for every frame of its account. Building a
``cryptography`` context per frame cost ~2 µs, more than the AES itself, so each key keeps one
CBC decryptor and one ECB encryptor open for its lifetime. Neither carries anything from one call
into the next (see :meth:`AesKey.decrypt` and :meth:`AesKey.encrypt`), so a key may be shared by
every connection of its account.
"""

from __future__ import annotations

import binascii
import os
import string
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_ZERO_IV = bytes(16)
_BLOCK = 16
_BLOCK_LENGTH_ERROR = "The length of the provided data is not a multiple of the block length."
_KEY_SIZES = (16, 24, 32)
_HEX = frozenset(string.hexdigits)
# The spec allows any pad byte but '|', '[' and ']' (§1.12). We draw from printable ASCII only:
# several receivers decode the plaintext as text (pysiaalarm "ascii"/ignore, dc09_spt utf-8), and
# printable pad bytes can never upset them.
PAD_ALPHABET = bytes(b for b in range(0x21, 0x7F) if b not in b"|[]")
# Random byte b becomes PAD_ALPHABET[b % len(PAD_ALPHABET)], as one bytes.translate table.
_PAD_TABLE = bytes(PAD_ALPHABET[b % len(PAD_ALPHABET)] for b in range(256))


class AesKey:
    """An AES-128/192/256 key with its cipher built once. ``repr`` never shows the key."""

    __slots__ = ("_cbc_decrypt", "_ecb_encrypt", "bits")

    def __init__(self, key: bytes) -> None:
        """Wrap raw key bytes (16, 24 or 32); prefer :meth:`from_hex` / :meth:`from_ascii`."""
        if len(key) not in _KEY_SIZES:
            raise ValueError(
                f"AES key must be 16, 24 or 32 bytes (AES-128/192/256), got {len(key)} bytes"
            )
        # Kept open: both are fed whole blocks only, so no partial block stays buffered inside.
        self._cbc_decrypt = Cipher(algorithms.AES(key), modes.CBC(_ZERO_IV)).decryptor().update
        # ECB is only the block primitive here: encrypt() does the CBC chaining itself.
        ecb = modes.ECB()  # noqa: S305
        self._ecb_encrypt = Cipher(algorithms.AES(key), ecb).encryptor().update
        self.bits = len(key) * 8

    @classmethod
    def from_hex(cls, text: str) -> AesKey:
        """A key written as 32, 48 or 64 hex characters (the spec's form)."""
        text = text.strip()
        if len(text) not in (32, 48, 64) or not set(text) <= _HEX:
            raise ValueError(
                f"hex key must be 32, 48 or 64 hex characters (AES-128/192/256), got {len(text)} characters"
            )
        return cls(bytes.fromhex(text))

    @classmethod
    def from_ascii(cls, text: str) -> AesKey:
        """A key given as the ASCII bytes of a 16, 24 or 32 character string (Ajax, pysiaalarm)."""
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("ASCII key must contain only ASCII characters") from None
        if len(raw) not in _KEY_SIZES:
            raise ValueError(f"ASCII key must be 16, 24 or 32 characters, got {len(raw)}")
        return cls(raw)

    @classmethod
    def parse(cls, text: str, key_format: str) -> AesKey:
        """A key in ``key_format`` "hex" or "ascii"."""
        if key_format == "hex":
            return cls.from_hex(text)
        if key_format == "ascii":
            return cls.from_ascii(text)
        raise ValueError(f"key format must be 'hex' or 'ascii', got {key_format!r}")

    def __repr__(self) -> str:
        return f"AesKey(<{self.bits}-bit, hidden>)"

    def encrypt(self, plain: bytes) -> bytes:
        """AES-CBC with a zero IV over whole blocks (``len(plain)`` must be a multiple of 16).

        The chaining is done here, block by block, over the key's ECB encryptor: C₀ = 0,
        Cᵢ = E(Pᵢ ⊕ Cᵢ₋₁). Nothing is carried from one call to the next.
        """
        if len(plain) % _BLOCK:
            raise ValueError(_BLOCK_LENGTH_ERROR)
        encrypt = self._ecb_encrypt
        block = encrypt(plain[:_BLOCK])  # P₁ ⊕ 0 is P₁
        out = [block]
        for start in range(_BLOCK, len(plain), _BLOCK):
            chained = int.from_bytes(plain[start : start + _BLOCK], "big") ^ int.from_bytes(
                block, "big"
            )
            block = encrypt(chained.to_bytes(_BLOCK, "big"))
            out.append(block)
        return b"".join(out)

    def decrypt(self, cipher_bytes: bytes) -> bytes:
        """AES-CBC with a zero IV over whole blocks (``len(cipher_bytes)`` a multiple of 16).

        The key's CBC decryptor stays open, so its chaining value is whatever block it saw last.
        A zero block is fed first and its output dropped: the real first block is then chained
        with zero, exactly as with a fresh zero-IV decryptor, whatever came before.
        """
        if len(cipher_bytes) % _BLOCK:
            raise ValueError(_BLOCK_LENGTH_ERROR)
        return self._cbc_decrypt(_ZERO_IV + cipher_bytes)[_BLOCK:]

    def encrypt_region(
        self,
        content: bytes,
        *,
        pad: bytes | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> str:
        """Encrypt ``content`` (data, x-data, timestamp) with the front pad and '|'; upper-case hex.

        The pad makes the region a multiple of 16, 1..16 bytes; when already aligned 16 are added.
        """
        needed = 16 - (len(content) + 1) % 16
        if needed == 0:
            needed = 16
        if pad is None:
            pad = random_pad(needed, random_bytes)
        else:
            if not pad or any(b in b"|[]" for b in pad):
                raise ValueError("pad must be non-empty and contain no '|', '[' or ']'")
            # A fixed pad (tests, vectors) is repeated or cut to the length the region needs.
            pad = (pad * (needed // len(pad) + 1))[:needed]
        return self.encrypt(pad + b"|" + content).hex().upper()

    def decrypt_region(self, hex_text: str) -> bytes:
        """Decrypt the ciphertext hex and drop the pad; returns ``data]xdata…_timestamp``.

        Raises ValueError on bad hex or length.
        """
        if len(hex_text) % 32 != 0 or len(hex_text) == 0:
            raise ValueError(
                f"ciphertext length {len(hex_text)} is not a multiple of 32 hex characters"
            )
        try:
            # Strict: unlike bytes.fromhex, spaces and non-ASCII characters are refused.
            cipher_bytes = binascii.unhexlify(hex_text)
        except ValueError:  # binascii.Error is a ValueError
            raise ValueError("ciphertext is not hex") from None
        return strip_pad(self.decrypt(cipher_bytes))


def random_pad(length: int, random_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """``length`` random pad bytes from :data:`PAD_ALPHABET` (never '|', '[' or ']')."""
    return bytes(random_bytes(length)).translate(_PAD_TABLE)


def strip_pad(plain: bytes) -> bytes:
    """Drop the pad: up to and including the first '|' when it comes before the first ']'.

    Tolerated deviations (§1.12): no '|' at all (Hikvision ``*NULL``, fioletoven with empty data,
    pysiaalarm's '0' pad, ioBroker's NUL pad): then strip leading bytes up to the first ']',
    '#' or 'N'.
    """
    bar = plain.find(b"|")
    close = plain.find(b"]")
    if bar != -1 and (close == -1 or bar < close):
        return plain[bar + 1 :]
    for index, byte in enumerate(plain):
        if byte in (0x5D, 0x23, 0x4E):  # ']', '#', 'N'
            return plain[index:]
    return plain
