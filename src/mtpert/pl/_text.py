"""Text from data shown as the user wrote it: in figures, and in the benchmark's report.html and
summary.md (:mod:`mtpert.benchmark.report`)."""

from __future__ import annotations

import unicodedata

HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories of characters that do not show as themselves: controls (NUL, ``\\x01``,
tab, line breaks), format characters (the right-to-left override U+202E, which reverses the text
after it; zero-width spaces), lone surrogates (which cannot even be encoded as UTF-8), and the
line and paragraph separators."""


def visible(text: object) -> str:
    """``text`` with each character of :data:`HIDDEN_CATEGORIES` written as its Python escape
    (``\\x01``, ``\\u202e``), so that a label from the data shows what it holds, and cannot hide,
    reorder or break the text around it. Every other character is kept as written."""
    text = str(text)
    if text.isprintable():  # the common case, checked at C speed
        return text
    return "".join(_escaped(c) if unicodedata.category(c) in HIDDEN_CATEGORIES else c for c in text)


def _escaped(char: str) -> str:
    """``char`` as Python writes it in a string literal: ``\\x01``, ``\\u202e``, ``\\U000e0041``."""
    return char.encode("unicode_escape").decode("ascii")


def literal(text: object) -> str:
    """``text`` as a matplotlib label drawn verbatim: hidden characters escaped by
    :func:`visible`, and each ``$`` escaped, so that no mathtext is parsed (``'T $x_$ cells'``
    would otherwise fail to draw, and ``'$x$'`` draw in italics)."""
    return visible(text).replace("$", r"\$")
