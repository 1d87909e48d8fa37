"""Deprecated alias of :mod:`mtpert.tuning`, kept for one release: importing it warns, and every
name of :mod:`mtpert.tuning` is read from there."""

from typing import Any

import mtpert.tuning as _moved
from mtpert._moved import warn_moved

__all__ = _moved.__all__

warn_moved("mtpert.benchmark.tuning", "import from mtpert.tuning instead")


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
