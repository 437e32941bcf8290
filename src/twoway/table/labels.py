"""Long labels shortened in the middle for printed tables and figures, never ambiguously.

``Very long treatment name A`` becomes ``Very long t…t name A``: the start and the end
are kept, since labels that differ tend to differ at one end or the other. Labels
that would shorten alike keep more characters until they differ, so a shortened
label always names one label. Only what is shown is shortened; files and JSON keep
the labels whole.
"""

from __future__ import annotations

import re
from typing import Sequence

__all__ = ["shorten", "shorten_labels", "shorten_index", "LABEL_WIDTH", "ELLIPSIS"]

#: Longest label shown whole in printed tables and figures, in characters.
LABEL_WIDTH = 24
ELLIPSIS = "…"


def shorten(label: str, width: int = LABEL_WIDTH) -> str:
    """``label`` cut to ``width`` characters by replacing its middle with ``…`` (whole if it fits)."""
    label = str(label)
    if len(label) <= width:
        return label
    keep = max(width - 1, 2)
    head = (keep + 1) // 2
    tail = keep - head
    return label[:head] + ELLIPSIS + (label[-tail:] if tail else "")


def shorten_labels(labels: Sequence[str], width: int = LABEL_WIDTH) -> list[str]:
    """Shorten each of ``labels`` to about ``width`` characters, keeping every one distinct.

    Parameters
    ----------
    labels : sequence of str, length n
        Distinct labels (repeats come back alike).
    width : int
        Characters kept where no other label gets in the way; at least 3.

    Returns
    -------
    list of str, length n
        The labels as shown: whole when short, else cut in the middle. Labels that
        would be shown alike (or like another label shown whole) are widened until
        they differ, so distinct labels stay distinct.

    Examples
    --------
    >>> shorten_labels(["Very long treatment name A", "Very long treatment name B"], width=12)
    ['Very l…ame A', 'Very l…ame B']
    >>> shorten_labels(["Treatment group A, high dose", "Treatment group B, high dose"], width=12)
    ['Treatment gro…A, high dose', 'Treatment gro…B, high dose']
    """
    width = max(int(width), 3)
    labels = [str(x) for x in labels]
    unique = list(dict.fromkeys(labels))
    widths = {lab: width for lab in unique}
    while True:
        shown = {lab: shorten(lab, widths[lab]) for lab in unique}
        by_text: dict[str, list[str]] = {}
        for lab, text in shown.items():
            by_text.setdefault(text, []).append(lab)
        clashes = [group for group in by_text.values() if len(group) > 1]
        if not clashes:
            return [shown[lab] for lab in labels]
        for group in clashes:
            for lab in group:
                if shown[lab] != lab:  # a whole label cannot grow; the shortened ones around it do
                    widths[lab] = min(len(lab), widths[lab] + 2)


_ENTRY = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<label>.*)\]$", re.DOTALL)


def shorten_index(names: Sequence[str], width: int = LABEL_WIDTH) -> list[str]:
    """Shorten labels as shown: inside ``name[label]`` entries (a summary's rows), or whole entries.

    The labels of all entries are shortened by :func:`shorten_labels` at once, so the
    entries stay distinct.
    """
    names = [str(n) for n in names]
    found = [_ENTRY.match(n) for n in names]
    labels = [m.group("label") if m else n for n, m in zip(names, found)]
    short = dict(zip(labels, shorten_labels(labels, width)))
    return [f"{m.group('name')}[{short[lab]}]" if m else short[lab] for lab, m in zip(labels, found)]
