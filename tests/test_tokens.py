"""Token estimators (kiro-api.md §8.3): the calibrated run-counting model, worked by hand."""

from __future__ import annotations

import pytest

from kiro_fast.tokens import (
    IMAGE_TOKENS,
    MESSAGE_TOKENS,
    TOOL_TOKENS,
    estimate_input_tokens,
    estimate_output_tokens,
    json_tokens,
    text_tokens,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        # one word run: 1.04 -> 1
        ("Hello", 1),
        # 2 word runs (2.08) + punctuation runs "," and "!" (2.06) = 4.14 -> 4
        ("Hello, world!", 4),
        # 9 words (9.36) + "." (1.03) = 10.39 -> 10
        ("The quick brown fox jumps over the lazy dog.", 10),
        # code: words def, f, x, return, x, 1 (6.24); punctuation "(", "):", "+" (3.09);
        # one line-break run "\n" before the indent (1.47) = 10.8 -> 11
        ("def f(x):\n    return x + 1", 11),
        # blank lines are one line-break run: 2 words + 1 run = 3.55 -> 4
        ("one\n\n\ntwo", 4),
        # JSON: words a, b (2.08); punctuation runs '{"', '":"', '"}' (3.09) = 5.17 -> 5
        ('{"a":"b"}', 5),
        # a 40-character word: 1.04 + 2 full 16-character stretches x 2.5 = 6.04 -> 6
        ("x" * 40, 6),
        # CJK: one token per character (800), the Latin "a" run adds 1.04 -> 801
        ("a" + "中" * 800, 801),
        # accented letters: "caf" word run 1.04 + "é" (other non-ASCII) 1.0 = 2.04 -> 2
        ("café", 2),
        # Cyrillic and emoji count one per character
        ("д" * 10 + "😀" * 10, 20),
    ],
)
def test_text_tokens_counts_runs(text: str, expected: int) -> None:
    assert text_tokens(text) == expected


def test_json_tokens_counts_the_compact_json() -> None:
    # {"a":"bbbbbbbbbb"}: words a, bbbbbbbbbb (2.08) + '{"', '":"', '"}' (3.09) -> 5
    assert json_tokens({"a": "b" * 10}) == 5
    # ["中中中中"]: the ASCII runs are counted with the non-ASCII characters taken out,
    # so '["' and '"]' make one punctuation run (1.03), + 4 CJK (4.0) = 5.03 -> 5
    assert json_tokens(["中中中中"]) == 5


def test_json_tokens_of_unencodable_value_is_zero() -> None:
    assert json_tokens(2**70) == 0
    assert json_tokens(object()) == 0


def test_estimate_input_tokens_counts_pieces_in_one_pass_plus_framing() -> None:
    # joined with a space: 2 word runs -> 2.08 -> 2
    assert estimate_input_tokens(["alpha", "beta"]) == 2
    # "alpha" + {"a":"bbbbbbbbbb"} -> 3 words (3.12) + 3 punctuation runs (3.09) -> 6
    assert estimate_input_tokens(["alpha"], [{"a": "b" * 10}]) == 6
    framed = estimate_input_tokens([], images=2, messages=3, tools=4, overhead=100)
    assert framed == 2 * IMAGE_TOKENS + 3 * MESSAGE_TOKENS + 4 * TOOL_TOKENS + 100
    assert (MESSAGE_TOKENS, TOOL_TOKENS, IMAGE_TOKENS) == (3, 8, 1_600)
    assert estimate_input_tokens([""]) == 1


def test_text_tokens_is_fast_enough_to_need_no_sampling() -> None:
    # 200 KB of mixed text is counted exactly (no shortcut): doubling the text doubles
    # the runs, so the estimate doubles up to rounding.
    text = "word, another line\n\tindented(x) 中文 " * 5_000
    assert abs(text_tokens(text * 2) - 2 * text_tokens(text)) <= 1


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
