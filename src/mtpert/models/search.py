"""Hyperparameter search spaces: what a model lets a tuner vary, and in which range.

Each model declares its own space (:meth:`mtpert.models.base.PerturbationModel.search_space`);
a user overrides or extends it with plain data, as a benchmark config or ``mtpert tune`` reads it::

    {"lr": {"low": 1e-4, "high": 1e-2, "log": True},    # a float range
     "latent_dim": {"choices": [16, 32, 64]},           # a choice
     "max_epochs": {"low": 20, "high": 200, "step": 20}, # integers (both ends written as integers)
     "dropout": 0.1}                                     # a fixed value: not tuned

Nothing here imports Optuna; :mod:`mtpert.tuning` turns a space into its suggestions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from mtpert.errors import ConfigError


@dataclass(frozen=True)
class FloatRange:
    """A float between ``low`` and ``high``, sampled on a log scale when ``log``."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        _check_range(self.low, self.high, self.log)


@dataclass(frozen=True)
class IntRange:
    """An integer between ``low`` and ``high`` (both included), in steps of ``step``, or on a log
    scale when ``log``."""

    low: int
    high: int
    log: bool = False
    step: int = 1

    def __post_init__(self) -> None:
        _check_range(self.low, self.high, self.log)
        if self.step < 1 or (self.log and self.step != 1):
            raise ConfigError(f"step must be a positive integer (and 1 on a log scale), got {self.step}.")


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (numbers, text, booleans or lists such as layer widths)."""

    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ConfigError("choices is empty; list at least one value (or give one value to hold it fixed).")


Distribution = FloatRange | IntRange | Choice
Space = Mapping[str, Distribution]


def read_space(values: Mapping[str, Any], *, where: str = "space") -> tuple[dict[str, Distribution], dict[str, Any]]:
    """A user's space, as plain data (see the module docstring): the distributions to tune, and
    the fixed values (anything not a mapping) that override a model's declared ranges.

    Raises:
        ConfigError: naming the hyperparameter: a mapping that is neither a range (``low`` and
            ``high``) nor a choice (``choices``), a bound that is not a number, an empty range or
            an empty choice.
    """
    tuned: dict[str, Distribution] = {}
    fixed: dict[str, Any] = {}
    for name, value in values.items():
        if not isinstance(value, Mapping):
            fixed[name] = value
            continue
        keys = set(value)
        if keys != {"choices"} and not {"low", "high"} <= keys <= {"low", "high", "log", "step"}:
            raise ConfigError(
                f"{where}.{name} must be a range {{low, high[, log][, step]}}, a list of {{choices}}, "
                f"or a fixed value; got the keys {sorted(keys)}."
            )
        try:
            tuned[name] = _choice(value["choices"]) if keys == {"choices"} else _range(value)
        except ConfigError as error:
            raise ConfigError(f"{where}.{name}: {error}") from None
    return tuned, fixed


def _choice(choices: Any) -> Choice:
    if not isinstance(choices, Sequence) or isinstance(choices, str):
        raise ConfigError(f"choices must be a list, got {choices!r}.")
    return Choice(tuple(_hashable(c) for c in choices))


def _range(value: Mapping[str, Any]) -> FloatRange | IntRange:
    """A range: of integers where ``step`` is given or both ends are written as integers (any
    kind: Python's, numpy's, or text), else of floats."""
    low, high = _number(value["low"], "low"), _number(value["high"], "high")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"log must be true or false, got {log!r}.")
    if "step" not in value and not (isinstance(low, Integral) and isinstance(high, Integral)):
        return FloatRange(float(low), float(high), log)
    bounds = {"low": low, "high": high, "step": _number(value.get("step", 1), "step")}
    fractional = [f"{k}={v}" for k, v in bounds.items() if not float(v).is_integer()]
    if fractional:
        raise ConfigError(f"a range with a step is of integers, but {', '.join(fractional)}; give whole numbers, or leave step out.")
    return IntRange(int(low), int(high), log, int(bounds["step"]))


def _check_range(low: float, high: float, log: bool) -> None:
    if not low < high:
        raise ConfigError(f"A range needs low < high, got low={low}, high={high}.")
    if log and low <= 0:
        raise ConfigError(f"A log-scale range needs low > 0, got {low}.")


def _number(value: Any, key: str) -> Real:
    """A number (any kind: Python's or numpy's), or one written as text (YAML reads ``1e-4`` as
    text); ``key`` names it in the error."""
    if isinstance(value, Real) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    raise ConfigError(f"low, high and step must be numbers; {key} is {value!r}.")


def _hashable(value: Any) -> Any:
    """Lists (layer widths) as tuples, so that a choice's values compare and hash."""
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value
