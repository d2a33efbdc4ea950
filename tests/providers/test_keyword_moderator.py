"""The offline moderator: whole-word, case-insensitive blocklist matching with OpenAI's names."""

from __future__ import annotations

import pytest

from core.providers.base import ModerationVerdict
from core.providers.offline import KeywordModerator

BLOCKLIST = ("gore", "beheading", "massacre", "child abuse", "terrorist attack", "nazi")


def verdict(text: str, blocklist: tuple[str, ...] = BLOCKLIST) -> ModerationVerdict:
    return KeywordModerator(blocklist).moderate([text])[0]


@pytest.mark.parametrize(
    "text",
    [
        "a battlefield full of gore",
        "GORE everywhere",
        "Gore-soaked streets",
        "a terrorist attack on a city",
        "a terrorist\n  attack",
        "(massacre)",
    ],
)
def test_a_blocklisted_word_or_phrase_is_flagged(text: str) -> None:
    assert verdict(text).flagged


@pytest.mark.parametrize(
    "text",
    [
        "a gory horror movie poster",
        "the Singapore skyline at night",
        "a terrorist in a spy thriller",
        "a quiet lake at dawn",
        "",
    ],
)
def test_words_that_only_contain_a_term_pass(text: str) -> None:
    assert verdict(text) == ModerationVerdict(flagged=False, categories=())


def test_categories_use_openai_names_without_repeats() -> None:
    assert verdict("gore").categories == ("violence/graphic",)
    assert verdict("nazi").categories == ("hate",)
    assert verdict("a massacre").categories == ("violence",)
    assert verdict("gore, beheading and a nazi").categories == ("hate", "violence/graphic")


def test_one_verdict_per_text_in_order() -> None:
    verdicts = KeywordModerator(BLOCKLIST).moderate(["calm sea", "gore", "green hills"])

    assert [v.flagged for v in verdicts] == [False, True, False]
    assert KeywordModerator(BLOCKLIST).moderate([]) == []


def test_matching_is_unicode_aware() -> None:
    assert verdict("STRASSE", ("straße",)).flagged  # case folding, not just lower()
    assert verdict("ÄRGER im Büro", ("ärger",)).flagged
    assert not verdict("ein Ärgernis", ("ärger",)).flagged  # ä and n are word characters


def test_an_empty_blocklist_flags_nothing() -> None:
    assert not verdict("gore", ()).flagged
    assert not verdict("gore", ("", "  ")).flagged
