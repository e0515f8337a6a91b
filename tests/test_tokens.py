"""Token estimators (kiro-api.md §8.3): kiro.rs's character-unit rule, worked by hand."""

from __future__ import annotations

import pytest

from kiro_fast.tokens import (
    IMAGE_TOKENS,
    estimate_input_tokens,
    estimate_output_tokens,
    json_tokens,
    text_tokens,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        # 5 units -> 1.25 tokens, x1.5 (< 100 tokens) = 1.875 -> 1
        ("Hello", 1),
        # 40 units -> 10 tokens x1.5 = 15
        ("a" * 40, 15),
        # 400 units -> 100 tokens: not < 100, < 200 -> x1.3 = 130
        ("a" * 400, 130),
        # 800 units -> 200 tokens -> x1.25 = 250
        ("a" * 800, 250),
        # 1200 units -> 300 tokens -> x1.2 = 360
        ("a" * 1200, 360),
        # 3196 units -> 799 tokens -> x1.2 = 958.8 -> 958
        ("a" * 3196, 958),
        # 3200 units -> 800 tokens -> x1.0
        ("a" * 3200, 800),
        # Latin-1 / Latin Extended / Latin Extended Additional are Western: 1 unit each
        ("é" * 3200, 800),
        ("ǅ" * 3200, 800),
        ("ẞ" * 3200, 800),
        # CJK: 4 units each -> 800 chars = 3200 units = 800 tokens
        ("中" * 800, 800),
        # Cyrillic and emoji count 4 units as well
        ("д" * 800, 800),
        ("😀" * 800, 800),
        # mixed: 1600 ASCII + 400 CJK = 1600 + 1600 = 3200 units
        ("a" * 1600 + "中" * 400, 800),
    ],
)
def test_text_tokens_follows_kiro_rs(text: str, expected: int) -> None:
    assert text_tokens(text) == expected


def test_json_tokens_counts_the_compact_json() -> None:
    # {"a":"bbbbbbbbbb"} is 18 characters -> 4.5 tokens x1.5 = 6.75 -> 6
    assert json_tokens({"a": "b" * 10}) == 6
    # non-ASCII JSON text is counted on its characters, not its UTF-8 bytes:
    # ["中中中中"] = 2 + 4 CJK + 2 = 4 + 16 units = 20 -> 5 tokens x1.5 = 7.5 -> 7
    assert json_tokens(["中中中中"]) == 7


def test_json_tokens_of_unencodable_value_is_zero() -> None:
    assert json_tokens(2**70) == 0
    assert json_tokens(object()) == 0


def test_estimate_input_tokens_sums_pieces_with_inflation_per_piece() -> None:
    # two pieces of 400 chars: 130 each (per-piece inflation, as kiro.rs sums them)
    assert estimate_input_tokens(["a" * 400, "a" * 400]) == 260
    assert estimate_input_tokens(["a" * 400], [{"a": "b" * 10}]) == 136
    assert estimate_input_tokens([], images=2, overhead=100) == 2 * IMAGE_TOKENS + 100
    assert estimate_input_tokens([""]) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("a", 1),
        ("abcd", 1),
        ("abcde", 2),
        ("a" * 400, 100),
        # CJK: (3*2+2)//3 = 2
        ("中文字", 2),
        # 3 CJK -> 2, plus 5 other -> (5+3)//4 = 2
        ("中文字hello", 4),
        # non-CJK, non-ASCII text uses the (n+3)/4 rule
        ("привет", 2),
    ],
)
def test_estimate_output_tokens(text: str, expected: int) -> None:
    assert estimate_output_tokens(text) == expected
