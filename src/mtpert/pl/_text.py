"""Text from data drawn as the user wrote it."""

from __future__ import annotations


def literal(text: object) -> str:
    """``text`` as a matplotlib label drawn verbatim: each ``$`` escaped, so that no mathtext is
    parsed (``'T $x_$ cells'`` would otherwise fail to draw, and ``'$x$'`` draw in italics)."""
    return str(text).replace("$", r"\$")
