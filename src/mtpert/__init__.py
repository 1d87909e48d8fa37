"""mtpert: multi-task single-cell perturbation modeling and its honest evaluation.

``import mtpert as mt`` is instant; the subpackages load on first use, as scanpy's do:
``mt.data``, ``mt.models``, ``mt.train``, ``mt.metrics``, ``mt.benchmark``, ``mt.pl``, ``mt.io``.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

try:
    __version__ = version("mtpert")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

SUBPACKAGES = ("data", "models", "train", "metrics", "benchmark", "pl", "io")
__all__ = ["__version__", "benchmark", "data", "io", "metrics", "models", "pl", "train"]


def __getattr__(name: str) -> ModuleType:
    if name in SUBPACKAGES:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *SUBPACKAGES])
