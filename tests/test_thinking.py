"""The <thinking> tag parser: every rule of spec kiro-api.md §5.9.2, under every fragmentation.

Each case is checked with the whole text in one fragment, split at every position, split at
every pair of positions (short texts), and one character per fragment: the pieces, merged,
must not depend on where the upstream cut its fragments.
"""

from __future__ import annotations

import pytest

from kiro_fast.thinking import QUOTE_CHARS, TEXT, THINKING, THINKING_END, ThinkingParser

T, K, E = TEXT, THINKING, THINKING_END


def run(fragments: list[str]) -> list[tuple[str, str]]:
    """Feed fragments, flush, and merge consecutive pieces of one kind."""
    parser = ThinkingParser()
    pieces = []
    for fragment in fragments:
        pieces += parser.feed(fragment)
    pieces += parser.flush()
    merged: list[tuple[str, str]] = []
    for kind, text in pieces:
        if merged and merged[-1][0] == kind and kind != E:
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged


def fragmentations(text: str) -> list[list[str]]:
    cuts = [[text], list(text)]
    cuts += [[text[:i], text[i:]] for i in range(1, len(text))]
    if len(text) <= 60:
        cuts += [
            [text[:i], text[i:j], text[j:]]
            for i in range(1, len(text))
            for j in range(i + 1, len(text))
        ]
    return cuts


def assert_parses(text: str, expected: list[tuple[str, str]]) -> None:
    for fragments in fragmentations(text):
        assert run(fragments) == expected, fragments


CASES = {
    "basic": (
        "<thinking>\nabc\n</thinking>\n\nHello",
        [(K, "abc\n"), (E, ""), (T, "Hello")],
    ),
    "only one leading newline dropped": (
        "<thinking>\n\nabc</thinking>\n\nHi",
        [(K, "\nabc"), (E, ""), (T, "Hi")],
    ),
    "no newline after the start tag": (
        "<thinking>abc</thinking>\n\nHi",
        [(K, "abc"), (E, ""), (T, "Hi")],
    ),
    "whitespace before the tag is never emitted": (
        "\n\n<thinking>\nx</thinking>\n\nHi",
        [(K, "x"), (E, ""), (T, "Hi")],
    ),
    "text before the tag is emitted": (
        "Intro <thinking>\nx</thinking>\n\nHi",
        [(T, "Intro "), (K, "x"), (E, ""), (T, "Hi")],
    ),
    "quoted start tag is text": (
        "Use `<thinking>` tags.",
        [(T, "Use `<thinking>` tags.")],
    ),
    "quoted end tag stays inside": (
        "<thinking>\nabout `</thinking>` tags\n</thinking>\n\nHi",
        [(K, "about `</thinking>` tags\n"), (E, ""), (T, "Hi")],
    ),
    "end tag without a blank line does not close": (
        "<thinking>\na</thinking> more\n</thinking>\n\nB",
        [(K, "a</thinking> more\n"), (E, ""), (T, "B")],
    ),
    "end tag with one newline and text is thinking": (
        "<thinking>\na</thinking>\nB",
        [(K, "a</thinking>\nB"), (E, "")],
    ),
    "end tag at the end of the stream": (
        "<thinking>\nabc</thinking>",
        [(K, "abc"), (E, "")],
    ),
    "end tag and whitespace at the end of the stream": (
        "<thinking>\nabc</thinking>\n",
        [(K, "abc"), (E, "")],
    ),
    "unclosed thinking": (
        "<thinking>\nabc",
        [(K, "abc"), (E, "")],
    ),
    "only the first block is extracted": (
        "<thinking>\na</thinking>\n\nB <thinking>c</thinking>\n\nD",
        [(K, "a"), (E, ""), (T, "B <thinking>c</thinking>\n\nD")],
    ),
    "empty thinking": (
        "<thinking>\n</thinking>\n\nHi",
        [(K, ""), (E, ""), (T, "Hi")],
    ),
    "a start tag followed by '<' is quoted": (
        "<thinking></thinking>\n\nHi",
        [(T, "<thinking></thinking>\n\nHi")],
    ),
    "whitespace after emitted text is kept": (
        "x\n\n<thinking>\nq</thinking>\n\nz",
        [(T, "x\n\n"), (K, "q"), (E, ""), (T, "z")],
    ),
    "no tags": ("Hello world", [(T, "Hello world")]),
    "whitespace only": ("\n\n \t", []),
    "text after the blank line keeps its own newlines": (
        "<thinking>\na</thinking>\n\n\nB\n",
        [(K, "a"), (E, ""), (T, "\nB\n")],
    ),
    "cjk and emoji": (
        "<thinking>\n思考中…🤔</thinking>\n\n答案：好",
        [(K, "思考中…🤔"), (E, ""), (T, "答案：好")],
    ),
    "angle brackets inside thinking": (
        "<thinking>\nif a<b and c</d> then</thinking>\n\nok",
        [(K, "if a<b and c</d> then"), (E, ""), (T, "ok")],
    ),
    "a start tag at the very end is text": (
        "see <thinking>",
        [(T, "see <thinking>")],
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_rule_holds_for_every_fragmentation(name):
    text, expected = CASES[name]
    assert_parses(text, expected)


@pytest.mark.parametrize("quote", sorted(QUOTE_CHARS))
def test_start_tag_next_to_a_quote_char_is_text(quote):
    for text in (f"a {quote}<thinking> b", f"a <thinking>{quote} b"):
        for fragments in fragmentations(text):
            assert run(fragments) == [(T, text)], fragments


@pytest.mark.parametrize("quote", sorted(QUOTE_CHARS))
def test_end_tag_next_to_a_quote_char_stays_inside(quote):
    body = f"x {quote}</thinking>\n\n y"
    text = f"<thinking>\n{body}</thinking>\n\nZ"
    # a quote after the tag cannot be followed by "\n\n", so test the char before only
    assert_parses(text, [(K, body), (E, ""), (T, "Z")])


def test_non_quote_neighbours_do_not_disqualify_a_tag():
    assert_parses("x\n<thinking>\nq</thinking>\n\nz", [(T, "x\n"), (K, "q"), (E, ""), (T, "z")])
    assert_parses("<thinking>\nq </thinking>\n\nz", [(K, "q "), (E, ""), (T, "z")])


def test_plain_text_is_released_at_once():
    parser = ThinkingParser()
    assert parser.feed("Hello") == [(T, "Hello")]
    assert parser.feed(" world") == [(T, " world")]


def test_only_a_possible_tag_prefix_is_held_back():
    parser = ThinkingParser()
    assert parser.feed("Hello <thi") == [(T, "Hello ")]
    assert parser.feed("s is a thing") == [(T, "<this is a thing")]


def test_inside_only_a_possible_end_tag_is_held_back():
    parser = ThinkingParser()
    assert parser.feed("<thinking>\nabc </thin") == [(K, ""), (K, "abc ")]
    assert parser.feed("king>\n") == []
    assert parser.feed("\nDone") == [(E, ""), (T, "Done")]


def test_whitespace_waits_until_text_follows():
    parser = ThinkingParser()
    assert parser.feed("\n\n") == []
    assert parser.feed("Hi") == [(T, "\n\nHi")]


def test_newline_after_the_start_tag_dropped_from_the_next_fragment():
    parser = ThinkingParser()
    assert parser.feed("<thinking>") == []
    assert parser.feed("\n") == [(K, "")]
    assert parser.feed("\nx") == [(K, "\nx")]


def test_text_passes_through_after_the_block():
    parser = ThinkingParser()
    parser.feed("<thinking>\na</thinking>\n\n")
    assert parser.done
    assert parser.feed("<thinking>") == [(T, "<thinking>")]
    assert parser.flush() == []


def test_flush_at_a_tool_boundary_closes_thinking_and_passes_text_after():
    parser = ThinkingParser()
    assert parser.feed("<thinking>\nplan</thinking>") == [(K, ""), (K, "plan")]
    assert parser.inside
    assert parser.flush() == [(E, "")]
    assert parser.done
    assert parser.feed("after") == [(T, "after")]


def test_flush_before_any_tag_drops_whitespace_only_text():
    parser = ThinkingParser()
    parser.feed("\n\n")
    assert parser.flush() == []


def test_a_quote_already_released_still_disqualifies_the_tag():
    parser = ThinkingParser()
    assert parser.feed("say `") == [(T, "say `")]
    assert parser.feed("<thinking>` now") == [(T, "<thinking>` now")]
