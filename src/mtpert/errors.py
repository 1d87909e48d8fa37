"""Exceptions raised by mtpert.

Every error mtpert raises on bad input says what is wrong and how to fix it; these classes let
callers catch mtpert's input errors without catching unrelated bugs.
"""

from __future__ import annotations


class MtpertError(Exception):
    """Base class of every error mtpert raises on purpose."""


class DataError(MtpertError, ValueError):
    """The AnnData does not fit what the operation needs (keys, values, groups, genes)."""


class DatasetUnavailableError(MtpertError, OSError):
    """A registered public dataset could not be downloaded or read from its cache."""


class ConfigError(MtpertError, ValueError):
    """A benchmark configuration that cannot be run as given."""


class DiskFullError(MtpertError, OSError):
    """A file could not be written because its disk (or the user's quota) is full."""


class MissingDependencyError(MtpertError, ImportError):
    """An optional extra that the requested feature needs is not installed."""


class PeerError(MtpertError, RuntimeError):
    """A model run in its own environment (a peer) failed, ran past its time limit or returned
    cells that cannot be scored; the message holds the end of what it printed."""


class CheckpointError(MtpertError, ValueError):
    """A saved model that cannot be loaded: an unreadable file, or weights that do not fit its
    config."""


class UnknownNameError(MtpertError, KeyError):
    """A name (model, metric, dataset) that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
