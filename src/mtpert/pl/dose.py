"""Dose-response: true and predicted mean expression of the strongest responders, across doses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mtpert._array import dense
from mtpert.data.spec import DatasetSpec
from mtpert.errors import DataError
from mtpert.metrics.de import top_degs
from mtpert.pl._text import literal

TRUTH = "truth"
"""``source`` of the real cells in :func:`dose_response_means`."""


def dose_response_means(
    truth: AnnData,
    preds: Mapping[str, AnnData],
    spec: DatasetSpec,
    *,
    condition: str | None = None,
    genes: Sequence[str] | None = None,
    n_genes: int = 6,
) -> pd.DataFrame:
    """Mean expression per gene and dose, of the real cells and of each model's prediction.

    Args:
        truth: real cells of one group (one value of ``spec.cell_type_key``): its control cells
            and its perturbed cells at several doses, log-normalized.
        preds: per model name, its predicted cells of that group at one or more doses, labelled
            as :meth:`mtpert.models.PerturbationModel.predict` labels them (concatenate the
            predictions of several doses).
        spec: obs keys; must have a ``dose_key``.
        condition: the perturbation to show; may be left out when there is only one.
        genes: genes to show; default the top ``n_genes`` DEGs (|moderated t| vs control) of the
            highest dose.

    Returns:
        Long table: ``gene``, ``dose``, ``source`` (``'truth'`` or the model name) and ``mean``;
        the truth has a row at ``spec.control_dose`` from the control cells.
    """
    if spec.dose_key is None:
        raise DataError("A dose-response needs doses; set DatasetSpec(dose_key=...).")
    groups = truth.obs[spec.cell_type_key].astype(str).unique()
    if len(groups) != 1:
        raise DataError(
            f"truth holds {len(groups)} groups of '{spec.cell_type_key}' ({sorted(groups)[:5]}); "
            f"pass the cells of one, e.g. truth[truth.obs['{spec.cell_type_key}'] == name]."
        )
    conditions = spec.conditions(truth)
    if condition is None:
        if len(conditions) != 1:
            raise DataError(
                f"truth has conditions {conditions}; say which to show (condition=...)."
            )
        condition = conditions[0]
    elif condition not in conditions:
        raise DataError(f"No '{condition}' cells in truth; its conditions: {conditions}.")
    control = truth[spec.is_control(truth)]
    treated = truth[(truth.obs[spec.condition_key].astype(str) == condition).to_numpy()]
    doses = spec.doses(treated)
    if genes is None:
        top = treated[np.isclose(treated.obs[spec.dose_key].to_numpy(dtype=float), doses[-1])]
        genes = list(top_degs(control, top, n_genes))
    missing = pd.Index(genes).difference(truth.var_names)
    if len(missing):
        raise DataError(f"Genes {missing[:5].tolist()} are not in truth.var_names.")
    rows = [_means(control, genes, spec.control_dose, TRUTH), _by_dose(treated, genes, spec, TRUTH)]
    for model, pred in preds.items():
        if pd.Index(genes).difference(pred.var_names).size:
            raise DataError(f"The prediction of '{model}' lacks some of the genes {list(genes)}.")
        rows.append(
            _by_dose(
                pred[(pred.obs[spec.condition_key].astype(str) == condition).to_numpy()],
                genes,
                spec,
                model,
            )
        )
    return pd.concat(rows, ignore_index=True)


def dose_response(
    truth: AnnData,
    preds: Mapping[str, AnnData],
    spec: DatasetSpec,
    *,
    condition: str | None = None,
    genes: Sequence[str] | None = None,
    n_genes: int = 6,
    ncols: int = 3,
    axes: Sequence[Axes] | None = None,
    title: str | None = None,
) -> Figure:
    """One panel per gene: true mean expression across doses (black) and each model's prediction.

    Arguments as in :func:`dose_response_means`. Doses are on a symmetric log axis, linear below
    the smallest positive dose, so the control dose (usually 0) sits at the left. ``axes``: where
    to draw, one per gene; default a new figure of ``ncols`` columns. ``title``: the figure's
    title, e.g. the group and seed shown. Returns the figure.
    """
    table = dose_response_means(
        truth, preds, spec, condition=condition, genes=genes, n_genes=n_genes
    )
    shown = list(dict.fromkeys(table["gene"]))
    created = axes is None
    if axes is None:
        nrows = -(-len(shown) // ncols)
        fig, grid = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
        for ax in grid.ravel()[len(shown) :]:
            ax.remove()
        axes = list(grid.ravel())
    elif len(axes) < len(shown):
        raise ValueError(f"{len(shown)} genes to show but {len(axes)} axes were given.")
    positive = table.loc[table["dose"] > 0, "dose"]
    sources = list(dict.fromkeys(table["source"]))
    colors = dict(
        zip(sources[1:], plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, strict=False)
    )
    for ax, gene in zip(axes, shown, strict=False):
        for source in sources:
            part = table[(table["gene"] == gene) & (table["source"] == source)].sort_values("dose")
            style = (
                {"c": "k", "lw": 2, "marker": "o"}
                if source == TRUTH
                else {"c": colors[source], "lw": 1.2, "marker": "s", "ms": 4}
            )
            ax.plot(part["dose"], part["mean"], label=literal(source), **style)
        if len(positive):
            ax.set_xscale("symlog", linthresh=float(positive.min()))
        ax.set_title(literal(gene), fontsize=9)
        ax.set_xlabel(literal(spec.dose_key))
        ax.set_ylabel("mean expression")
    fig = axes[0].figure
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8, frameon=False)
    if title:
        fig.suptitle(literal(title))
    if created:
        fig.tight_layout(rect=(0, 0, 0.85, 0.95 if title else 1))
    return fig


def _means(cells: AnnData, genes: Sequence[str], dose: float, source: str) -> pd.DataFrame:
    values = dense(cells[:, list(genes)].X).mean(0)
    return pd.DataFrame(
        {"gene": list(genes), "dose": float(dose), "source": source, "mean": values}
    )


def _by_dose(cells: AnnData, genes: Sequence[str], spec: DatasetSpec, source: str) -> pd.DataFrame:
    dose = cells.obs[spec.dose_key].to_numpy(dtype=float)
    if not len(dose):
        raise DataError(f"No cells of the shown condition for '{source}'.")
    return pd.concat(
        [_means(cells[dose == d], genes, d, source) for d in np.unique(dose)], ignore_index=True
    )
