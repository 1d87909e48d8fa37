"""How training went: loss terms per epoch, training against validation."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes

from mtpert.pl._text import literal


def loss_curves(history: pd.DataFrame, *, ax: Axes | None = None, title: str | None = None) -> Axes:
    """Each loss term per epoch: training solid, validation dashed, one colour per term.

    ``history`` is a model's ``history`` (e.g. :attr:`mtpert.models.MultiTaskModel.history`):
    an ``epoch`` column and ``train_<term>`` / ``val_<term>`` columns. The y axis is logarithmic
    when every value is positive.
    """
    columns = [c for c in history.columns if c.startswith(("train_", "val_"))]
    if "epoch" not in history.columns or not columns:
        raise ValueError(
            "history needs an 'epoch' column and train_<term> / val_<term> columns, as in model.history; "
            f"got columns {list(history.columns)}."
        )
    ax = ax if ax is not None else plt.subplots(figsize=(5, 3.5))[1]
    terms = list(dict.fromkeys(c.split("_", 1)[1] for c in columns))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, term in enumerate(terms):
        for split, style in (("train", "-"), ("val", "--")):
            column = f"{split}_{term}"
            if column in history.columns:
                ax.plot(
                    history["epoch"],
                    history[column],
                    ls=style,
                    c=colors[i % len(colors)],
                    label=literal(f"{split} {term}"),
                )
    if (history[columns].dropna() > 0).all().all():
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7, frameon=False)
    if title:
        ax.set_title(literal(title))
    return ax
