"""mtpert: multi-task single-cell perturbation modeling and its honest evaluation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mtpert")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
