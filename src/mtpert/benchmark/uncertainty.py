"""Deprecated alias of :mod:`mtpert.uncertainty`, kept for one release: importing it warns, and
every name of :mod:`mtpert.uncertainty` is read from there."""

from typing import Any

import mtpert.uncertainty as _moved
from mtpert._moved import warn_moved

__all__ = _moved.__all__

warn_moved("mtpert.benchmark.uncertainty", "import from mtpert.uncertainty instead")


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
