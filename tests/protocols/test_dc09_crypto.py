"""AES keys, the front pad and the decrypt tolerance (PROTOCOLS.md §1.12)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from protocols.dc09_crypto import PAD_ALPHABET, AesKey, random_pad, strip_pad

HEX_KEY = "000102030405060708090A0B0C0D0E0F"


class TestKeyParsing:
    @pytest.mark.parametrize("size", [16, 24, 32])
    def test_hex_key_sizes(self, size: int) -> None:
        """32/48/64 hex characters give AES-128/192/256."""
        assert AesKey.from_hex("ab" * size).bits == size * 8

    @pytest.mark.parametrize("size", [16, 24, 32])
    def test_ascii_key_sizes(self, size: int) -> None:
        """16/24/32 ASCII characters give AES-128/192/256."""
        assert AesKey.parse("k" * size, "ascii").bits == size * 8

    def test_hex_key_wrong_length_names_the_lengths(self) -> None:
        """A hex key of the wrong length says which lengths are expected."""
        with pytest.raises(ValueError, match="32, 48 or 64"):
            AesKey.from_hex("0011")

    def test_hex_key_non_hex(self) -> None:
        """A 32-character key that is not hex is refused as a hex key."""
        with pytest.raises(ValueError, match="hex"):
            AesKey.from_hex("1234567890ABCDEFGHIJ1234567890AB")

    def test_ascii_key_wrong_length_names_the_lengths(self) -> None:
        """An ASCII key of the wrong length says which lengths are expected."""
        with pytest.raises(ValueError, match="16, 24 or 32"):
            AesKey.from_ascii("short")

    def test_ascii_key_non_ascii(self) -> None:
        """Non-ASCII characters are refused in an ASCII key."""
        with pytest.raises(ValueError, match="ASCII"):
            AesKey.from_ascii("ü" * 16)

    def test_unknown_format(self) -> None:
        """Only "hex" and "ascii" are key formats."""
        with pytest.raises(ValueError, match="'hex' or 'ascii'"):
            AesKey.parse(HEX_KEY, "base64")

    def test_hex_and_ascii_of_the_same_text_differ(self) -> None:
        """The same 32 characters are a 128-bit key as hex and a 256-bit key as ASCII."""
        assert AesKey.parse(HEX_KEY, "hex").bits == 128
        assert AesKey.parse(HEX_KEY, "ascii").bits == 256

    def test_repr_hides_the_key(self) -> None:
        """repr shows the size only, never key material."""
        text = repr(AesKey.from_ascii("1234567890123456"))
        assert "1234567890123456" not in text
        assert "128" in text
        assert "31323334" not in text


class TestRegion:
    def test_published_vector(self) -> None:
        """The G3 *ACK region decrypts to the published plaintext without its pad."""
        key = AesKey.from_hex(HEX_KEY)
        region = "799640F7C17762A5018A56E2DB1A4C39A27AB1EDA88769758B17009D1A45F4EC"
        assert key.decrypt_region(region) == b"]_12:00:05,01-01-2024"
        assert key.encrypt_region(b"]_12:00:05,01-01-2024", pad=b"P") == region

    @pytest.mark.parametrize("length", [0, 1, 14, 15, 16, 30, 31, 47])
    def test_pad_makes_whole_blocks(self, length: int) -> None:
        """The pad is 1..16 bytes and the region a multiple of 16; aligned content gets 16."""
        key = AesKey.from_hex(HEX_KEY)
        content = b"x" * length
        plain = key.decrypt(bytes.fromhex(key.encrypt_region(content)))
        pad_length = plain.index(b"|")
        assert len(plain) % 16 == 0
        assert 1 <= pad_length <= 16
        if (length + 1) % 16 == 0:
            assert pad_length == 16
        assert plain[pad_length + 1 :] == content

    def test_output_is_upper_case_hex(self) -> None:
        """Ciphertext is written as upper-case hex."""
        text = AesKey.from_hex(HEX_KEY).encrypt_region(b"]_12:00:05,01-01-2024")
        assert text == text.upper()
        assert all(c in "0123456789ABCDEF" for c in text)

    def test_lower_case_ciphertext_is_accepted(self) -> None:
        """Lower-case ciphertext hex decrypts like upper case."""
        key = AesKey.from_hex(HEX_KEY)
        text = key.encrypt_region(b"#1234|NRP]")
        assert key.decrypt_region(text.lower()) == b"#1234|NRP]"

    @pytest.mark.parametrize(
        "text",
        ["", "00" * 15, "zz" * 16, "00 " * 16, "0" * 33],
    )
    def test_bad_ciphertext_raises_value_error(self, text: str) -> None:
        """Empty, partial-block, non-hex or spaced ciphertext raises ValueError."""
        with pytest.raises(ValueError, match="ciphertext"):
            AesKey.from_hex(HEX_KEY).decrypt_region(text)

    def test_fixed_pad_may_not_hold_separators(self) -> None:
        """A caller-fixed pad with '|', '[' or ']' is refused."""
        with pytest.raises(ValueError, match="pad"):
            AesKey.from_hex(HEX_KEY).encrypt_region(b"]", pad=b"|")


class TestPad:
    @given(st.integers(1, 16), st.binary(min_size=16, max_size=16))
    def test_random_pad_avoids_separators(self, length: int, noise: bytes) -> None:
        """Random pad bytes come from the printable alphabet without '|', '[' or ']'."""
        pad = random_pad(length, lambda n: (noise * 2)[:n])
        assert len(pad) == length
        assert set(pad) <= set(PAD_ALPHABET)
        assert not set(pad) & set(b"|[]")

    @pytest.mark.parametrize(
        ("plain", "expected"),
        [
            (b"PPPP|#1234|NRP]", b"#1234|NRP]"),  # spec: up to the first '|'
            (b"ppppppppppp]_18:24:52,07-05-2020", b"]_18:24:52,07-05-2020"),  # Hikvision *NULL
            (b"0000000000]_12:00:05,01-01-2024", b"]_12:00:05,01-01-2024"),  # pysiaalarm *ACK
            (b"\x00\x00\x00|]_12:00:05,01-01-2024", b"]_12:00:05,01-01-2024"),  # ioBroker NUL pad
            (b"\x01\x02Nri1/BA01]", b"Nri1/BA01]"),  # data without account, no '|'
        ],
    )
    def test_strip_pad_tolerance(self, plain: bytes, expected: bytes) -> None:
        """The pad is dropped by the spec rule, else up to the first ']', '#' or 'N'."""
        assert strip_pad(plain) == expected


def _fresh_cbc(key: bytes, data: bytes, *, decrypt: bool) -> bytes:
    """AES-CBC with a zero IV through a new cryptography context: the reference."""
    cipher = Cipher(algorithms.AES(key), modes.CBC(bytes(16)))
    context = cipher.decryptor() if decrypt else cipher.encryptor()
    return context.update(data) + context.finalize()


class TestKeptOpenContexts:
    @given(
        st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
        st.lists(
            st.tuples(
                st.booleans(),
                st.integers(0, 8).flatmap(lambda n: st.binary(min_size=16 * n, max_size=16 * n)),
            ),
            min_size=1,
            max_size=6,
        ),
    )
    def test_interleaved_calls_match_a_fresh_zero_iv_context(
        self, raw_key: bytes, calls: list[tuple[bool, bytes]]
    ) -> None:
        """Encrypt and decrypt in any order give what a new zero-IV CBC context gives each time."""
        key = AesKey(raw_key)
        for decrypt, data in calls:
            if decrypt:
                assert key.decrypt(data) == _fresh_cbc(raw_key, data, decrypt=True)
            else:
                assert key.encrypt(data) == _fresh_cbc(raw_key, data, decrypt=False)

    @pytest.mark.parametrize("length", [1, 15, 17, 33])
    def test_partial_blocks_are_refused_and_leave_the_key_usable(self, length: int) -> None:
        """A partial block raises ValueError as cryptography's finalize did, and changes nothing."""
        key = AesKey.from_hex(HEX_KEY)
        with pytest.raises(ValueError, match="multiple of the block length"):
            key.decrypt(bytes(length))
        with pytest.raises(ValueError, match="multiple of the block length"):
            key.encrypt(bytes(length))
        block = bytes(range(32))
        assert key.decrypt(block) == _fresh_cbc(bytes.fromhex(HEX_KEY), block, decrypt=True)
        assert key.encrypt(block) == _fresh_cbc(bytes.fromhex(HEX_KEY), block, decrypt=False)

    @given(st.integers(0, 40), st.binary(min_size=40, max_size=40))
    def test_random_pad_maps_each_random_byte_as_before(self, length: int, noise: bytes) -> None:
        """The translate table gives PAD_ALPHABET[b % len(PAD_ALPHABET)] for every random byte."""
        pad = random_pad(length, lambda n: noise[:n])
        assert pad == bytes(PAD_ALPHABET[b % len(PAD_ALPHABET)] for b in noise[:length])
