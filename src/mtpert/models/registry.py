"""Model names -> classes, so the CLI and the benchmark take models by name."""

from __future__ import annotations

from types import MappingProxyType

import pandas as pd

from mtpert.models.base import PerturbationModel
from mtpert.models.simple import ControlPredictor, MeanShift

MODELS: MappingProxyType[str, type[PerturbationModel]] = MappingProxyType(
    {cls.name: cls for cls in (ControlPredictor, MeanShift)}
)
"""Every registered model, keyed by its ``name``. Built once at import; never changed."""


def get_model(name: str) -> type[PerturbationModel]:
    """The model class registered as ``name``."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"Unknown model '{name}'; registered models: {', '.join(MODELS)}.") from None


def list_models() -> pd.DataFrame:
    """One row per registered model: its name and the first line of its docstring."""
    rows = [{"model": n, "description": (c.__doc__ or "").strip().splitlines()[0]} for n, c in MODELS.items()]
    return pd.DataFrame(rows).set_index("model")
