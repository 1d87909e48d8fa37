"""Deprecated alias of :mod:`mtpert.uncertainty`, kept for one release: importing it warns, and
every name of :mod:`mtpert.uncertainty` is read from there."""

import warnings
from typing import Any

import mtpert.uncertainty as _moved

__all__ = _moved.__all__

warnings.warn(
    "mtpert.benchmark.uncertainty is deprecated and will be removed in the next release; "
    "import from mtpert.uncertainty instead.",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
