"""Every CRC-32 routine the decoder relies on, checked against crcmod as an independent reference.

The event stream uses CRC-32/ISO-HDLC (kiro-api.md §6.2): the compiled ``crc32``, the
pure-Python ``crc32`` and :func:`zlib.crc32` (which the Python twin delegates to) must
all agree with ``crcmod``'s predefined ``crc-32`` on any length, alignment, buffer type
and chaining seed.
"""

from __future__ import annotations

import importlib
import random
import zlib
from collections.abc import Callable
from typing import Any

import crcmod.predefined
import pytest

REFERENCE: Callable[..., int] = crcmod.predefined.mkCrcFun("crc-32")
#: random bytes with slack, so slices can start at any offset
DATA = random.Random(0x5EED).randbytes(4096 + 64)


@pytest.fixture(
    params=[
        pytest.param("kiro_fast._eventstream", marks=pytest.mark.c_extension, id="c"),
        # the compiled slice-by-8 tables alone, without the carry-less-multiply fold
        pytest.param("kiro_fast._eventstream:tables", marks=pytest.mark.c_extension, id="c-tables"),
        pytest.param("kiro_fast._eventstream_py", id="py"),
        pytest.param("zlib", id="zlib"),
    ]
)
def crc32(request: pytest.FixtureRequest) -> Any:
    if request.param == "zlib":
        return zlib.crc32
    module, _, variant = request.param.partition(":")
    return getattr(importlib.import_module(module), "_crc32_tables" if variant else "crc32")


def test_check_value(crc32):
    assert crc32(b"123456789") == 0xCBF43926
    assert REFERENCE(b"123456789") == 0xCBF43926


def test_known_values(crc32):
    assert crc32(b"") == 0
    assert crc32(b"\x00") == 0xD202EF8D
    assert crc32(b"\xff" * 4) == 0xFFFFFFFF


def test_every_length_up_to_4096(crc32):
    for length in range(4097):
        chunk = DATA[:length]
        assert crc32(chunk) == REFERENCE(chunk), length


@pytest.mark.parametrize("length", [65_535, 65_536, 65_537, 1024 * 1024 + 3])
def test_long_inputs(crc32, length):
    # 64 KiB and more: the compiled crc32 releases the GIL there
    data = random.Random(length).randbytes(length)
    assert crc32(data) == REFERENCE(data)
    assert crc32(memoryview(data)[1:], crc32(data[:1])) == REFERENCE(data)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_unaligned_slices(crc32, kind):
    source = kind(DATA)
    lengths = [*range(0, 70), 255, 256, 257, 1000, 1023, 1024, 1025, 4095, 4096]
    for offset in range(16):
        for length in lengths:
            piece = source[offset : offset + length]
            assert crc32(piece) == REFERENCE(bytes(piece)), (offset, length)


def test_readonly_and_writable_views(crc32):
    view = memoryview(DATA).toreadonly()[3:1003]
    assert crc32(view) == REFERENCE(DATA[3:1003])
    writable = memoryview(bytearray(DATA))[5:517]
    assert crc32(writable) == REFERENCE(DATA[5:517])


def test_chained_values(crc32):
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.choices(range(len(DATA) + 1), k=rng.randint(1, 6)))
        bounds = [0, *cuts, len(DATA)]
        value = 0
        for start, end in zip(bounds, bounds[1:], strict=False):
            value = crc32(DATA[start:end], value)
        assert value == REFERENCE(DATA)


@pytest.mark.parametrize("seed", [0, 1, 0x7FFFFFFF, 0x80000000, 0xCBF43926, 0xFFFFFFFF])
def test_arbitrary_seed_values(crc32, seed):
    for length in (0, 1, 7, 8, 9, 64, 1000):
        assert crc32(DATA[:length], seed) == REFERENCE(DATA[:length], seed), length


def test_result_is_an_unsigned_32_bit_int(crc32):
    for length in range(64):
        value = crc32(DATA[:length])
        assert type(value) is int
        assert 0 <= value <= 0xFFFFFFFF
