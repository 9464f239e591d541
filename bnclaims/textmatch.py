"""One rule for matching an author's words against a thread.

Claim quotes, ``tests:`` fragments (and, later, maps and answers) are all matched by
``find``: both texts are *folded* — Unicode NFC, typographic quotes, apostrophes and dashes
replaced by their ASCII forms, ``…`` by ``...``, runs of whitespace collapsed to one
space — and the folded needle is searched in the folded haystack. The span returned is in
the original haystack's characters, so a quote can be highlighted where it stands.

On a miss, ``closest`` finds the passage of the haystack that agrees longest with the
needle and the first character where they differ, for an error a person can act on.
"""

from __future__ import annotations

import difflib
import unicodedata

_FOLD = {
    **{c: "'" for c in "\u2018\u2019\u201a\u201b\u2032\u02bc\u00b4`"},
    **{c: '"' for c in "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb"},
    **{c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"},
    "\u2026": "...",
}
MAX_HINT_CHARS = 200_000  # the closest-passage hint is skipped for larger texts (it is quadratic at worst)


def fold(text: str) -> tuple[str, list[int]]:
    """(folded text, for each folded character the offset of the original character it came from)."""
    out: list[str] = []
    origin: list[int] = []
    i, n = 0, len(text)
    pending_space = -1  # offset of the first whitespace character of the current run
    while i < n:
        # a base character with its combining marks is normalized as one unit
        j = i + 1
        while j < n and unicodedata.combining(text[j]):
            j += 1
        unit = text[i:j]
        if unit.isspace():
            if pending_space < 0:
                pending_space = i
            i = j
            continue
        if pending_space >= 0:
            if out:
                out.append(" ")
                origin.append(pending_space)
            pending_space = -1
        for ch in unicodedata.normalize("NFC", unit):
            for folded in _FOLD.get(ch, ch):
                out.append(folded)
                origin.append(i)
        i = j
    return "".join(out), origin


def normalize(text: str) -> str:
    """The folded form of ``text`` (what two texts are compared by)."""
    return fold(text)[0]


def find(haystack: str, needle: str) -> tuple[int, int] | None:
    """Character span of ``needle`` in ``haystack`` under folding, or None (also for an empty needle)."""
    folded_needle = normalize(needle)
    if not folded_needle:
        return None
    folded, origin = fold(haystack)
    at = folded.find(folded_needle)
    if at < 0:
        return None
    last = origin[at + len(folded_needle) - 1]
    end = last + 1
    while end < len(haystack) and unicodedata.combining(haystack[end]):
        end += 1
    return origin[at], end


def closest(haystack: str, needle: str, context: int = 60, names: tuple[str, str] = ("thread", "quote")) -> str | None:
    """A one-line hint: the passage of ``haystack`` closest to ``needle``, with the place
    where they first differ marked ``‸``; None when nothing useful is found."""
    folded_needle = normalize(needle)
    folded, _ = fold(haystack)
    if not folded_needle or not folded or len(folded) > MAX_HINT_CHARS:
        return None
    matcher = difflib.SequenceMatcher(None, folded, folded_needle, autojunk=False)
    block = matcher.find_longest_match(0, len(folded), 0, len(folded_needle))
    if block.size < min(8, len(folded_needle)):
        return None
    # align the needle on the window around that block; the first gap in the alignment is the difference
    lo_win = max(0, block.a - block.b - 20)
    window = folded[lo_win:block.a + len(folded_needle) - block.b + 20]
    ops = difflib.SequenceMatcher(None, window, folded_needle, autojunk=False).get_opcodes()
    if ops and ops[0][0] == "delete":  # the window's padding before the needle
        ops = ops[1:]
    elif ops and ops[0][0] == "replace" and ops[0][2] - ops[0][1] > ops[0][4] - ops[0][3]:
        tag, i1, i2, j1, j2 = ops[0]  # padding and a changed start: only the last j2 - j1 characters differ
        ops = [(tag, i2 - (j2 - j1), i2, j1, j2)] + ops[1:]
    tag, i1, i2, j1, j2 = next((op for op in ops if op[0] != "equal"), ops[-1])
    if tag == "equal" or (tag == "delete" and j1 == len(folded_needle)):
        return None
    first_diff = lo_win + i1
    big, small = names
    if tag == "delete":
        difference = f"the {big} has {window[i1:i2][:20]!r} that the {small} lacks"
    elif tag == "insert":
        difference = f"the {small} has {folded_needle[j1:j2][:20]!r} that the {big} lacks"
    else:
        difference = f"the {big} has {window[i1:i2][:20]!r} where the {small} has {folded_needle[j1:j2][:20]!r}"
    lo = max(0, first_diff - context)
    hi = min(len(folded), first_diff + 1 + context // 3)
    shown = ("…" if lo > 0 else "") + folded[lo:first_diff] + "‸" + folded[first_diff:hi] \
        + ("…" if hi < len(folded) else "")
    return f"closest passage: '{shown}' (at ‸ {difference})"
