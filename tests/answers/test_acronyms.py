"""Short forms a runbook spells out for itself, read as Schwartz and Hearst read them."""

from __future__ import annotations

import time

from bot.answers.acronyms import definitions


def test_a_short_form_in_parentheses_is_spelled_by_the_words_just_before_it() -> None:
    text = (
        "This alert fires when the hostpath provisioner (HPP) is not ready. It belongs to "
        "Scheduling, Scale, and Performance (SSP). A pod disruption budget (PDB) limits evictions."
    )
    assert definitions(text) == {
        "hpp": ["hostpath", "provisioner"],  # the second P is inside "hostpath"
        "ssp": ["scheduling", "scale", "and", "performance"],
        "pdb": ["pod", "disruption", "budget"],
    }


def test_what_is_not_a_definition_is_left_alone() -> None:
    text = (
        "Restart it (carefully). The cache (Redis) is full. See the runbook (SEE RUNBOOK) first. "
        "Ask the team. (HPP) stands alone. Storage class (SC)"
    )
    # One capital is a word in parentheses, not a short form; a short form whose letters the words before it do
    # not hold, or that stands at the start of a sentence, defines nothing. "Storage class (SC)" does.
    assert definitions(text) == {"sc": ["storage", "class"]}


def test_a_definition_does_not_reach_back_into_the_previous_sentence() -> None:
    assert definitions("Check the virt handler. Memory (VH) is low.") == {}


def test_the_first_definition_of_a_short_form_counts() -> None:
    text = "the containerized data importer (CDI) runs. Later the CDI data importer (CDI) again, and CD imports (CDI)."
    assert definitions(text) == {"cdi": ["containerized", "data", "importer"]}


def test_a_single_word_or_the_short_form_itself_is_not_a_spelled_out_form() -> None:
    assert definitions("Use kubectl (KUBECTL) or the HPP (HPP) tool.") == {}


def test_a_long_document_full_of_parentheses_is_read_in_linear_time() -> None:
    text = "word " * 200_000 + "(AB) x " * 20_000 + "the alpha beta (AB)."
    started = time.perf_counter()
    assert definitions(text) == {"ab": ["alpha", "beta"]}
    assert time.perf_counter() - started < 5  # each look back is bounded: about 0.1 s here, minutes without it


def test_words_outside_ascii_are_whole_words_and_code_defines_nothing() -> None:
    text = "A naïve Bayes (NB) model.\n\n```\nhpp-pool-abc   Running (HPP)\n```\n\nThe hostpath provisioner (HPP) runs."
    assert definitions(text) == {"nb": ["naïve", "bayes"], "hpp": ["hostpath", "provisioner"]}
