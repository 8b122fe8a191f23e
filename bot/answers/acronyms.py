"""Short forms a runbook defines for itself: "the hostpath provisioner (HPP)" spells out the HPP of HPPNotReady.

An alert's text often says in full what its runbook's title abbreviates ("Hostpath Provisioner is not
available to use" for HPPNotReady), and a question may do either. A definition is read the way
Schwartz and Hearst's method for biomedical text reads one (PSB 2003): a short form in parentheses,
and as long form the fewest words just before it whose letters, in order, spell it, the first
letter starting a word. Only what the document itself says counts: no list of abbreviations.
"""

from __future__ import annotations

import functools
import re

SHORT = re.compile(r"\(\s*([A-Za-z][A-Za-z0-9]{1,9})\s*\)")
WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")  # "naïve" is one word
FENCED = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1", re.M | re.S)  # code and its output define nothing
LOOK_BACK = 400  # characters before a parenthesis: more than the 15 words a long form may have
CLAUSE_END = re.compile(r"[.;:!?]\s|\n\s*\n")  # a long form does not reach back past the end of a sentence


def long_form(before: str, short: str) -> list[str]:
    """The words of ``before`` (the text up to the parenthesis) that ``short`` abbreviates, or []."""
    clause = CLAUSE_END.split(before)[-1]
    words = WORD.findall(clause)[-min(len(short) + 5, 2 * len(short)) :]
    text = " ".join(words).lower()
    letters = [c for c in short.lower() if c.isalnum()]
    at = len(text) - 1
    for n, c in enumerate(reversed(letters)):
        first = n == len(letters) - 1
        # Each letter is found further left; the first one must begin a word.
        while at >= 0 and (text[at] != c or (first and at > 0 and text[at - 1] != " ")):
            at -= 1
        if at < 0:
            return []
        at -= 1
    found = text[at + 1 :].split()
    if short.lower() in found:  # "(AB) x (AB)": a short form does not spell itself
        return []
    return found


@functools.lru_cache(maxsize=64)  # a document's text is read for its title's words and for its title's vector
def definitions(text: str) -> dict[str, list[str]]:
    """Each short form the text defines (lower case, at least two capitals: "HPP", "CNAO", "VMs") -> its words.

    The first definition of a short form counts, as a reader takes the first. Fenced code is not read. The
    answer is shared between calls: do not change it.
    """
    text = FENCED.sub("\n\n", text)
    found: dict[str, list[str]] = {}
    for m in SHORT.finditer(text):
        short = m.group(1)
        if sum(c.isupper() for c in short) < 2 or short.lower() in found:
            continue
        words = long_form(text[max(0, m.start() - LOOK_BACK) : m.start()], short)
        if len(words) >= 2:  # one word is a name in parentheses, not a spelled-out form
            found[short.lower()] = words
    return found
