"""Which input genes drive a predicted change: integrated gradients through a model's prediction.

A model whose prediction is a differentiable function of the control cells' expression (it has a
``prediction_function(condition, dose)``: the multi-task family, ``gpo_vae`` / ``sams_vae``) can
say, for each gene whose predicted change is of interest, how much each input gene of the control
cells contributed to it. Integrated gradients (Sundararajan et al. 2017, through Captum) integrate
the gradient along the straight path from a baseline input to each cell, so a cell's attributions
sum to its predicted change minus the change predicted for the baseline (completeness). Models
whose prediction does not depend on the control cells' expression through a network (``control``,
``mean_shift``, ``additive``: a fixed shift) have nothing to attribute and are refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from mtpert._array import dense
from mtpert.errors import ConfigError, DataError, MissingDependencyError
from mtpert.models.base import PerturbationModel

Baseline = Literal["zeros", "mean"]


def attribute(
    model: PerturbationModel,
    control: AnnData,
    condition: str,
    dose: float | None = None,
    *,
    targets: Sequence[str] | int = 20,
    baseline: Baseline = "zeros",
    n_steps: int = 32,
) -> pd.DataFrame:
    """Integrated-gradient attributions of a predicted change to the control cells' genes.

    The attributed function is each cell's predicted change, prediction minus the cell itself
    (before clipping at 0 and, for the multi-task family, before ``bound_change``, which scales a
    whole prediction by one factor), for each target gene; attributions are averaged over the
    cells of ``control`` (prepared like the model's training data).

    Args:
        targets: the genes whose predicted change is explained, or how many: that many genes of
            largest mean predicted change (absolute).
        baseline: the reference input: ``zeros`` (no expression), or ``mean`` (every cell
            replaced by the mean control cell, so attributions explain how a cell's own
            expression moves its predicted change away from the average cell's).
        n_steps: integration steps (more: closer to completeness).

    Returns:
        A table with one row per input gene and one column per target gene (the model's gene
        order; targets by decreasing mean predicted change); ``attrs["convergence"]`` holds the
        largest absolute completeness error over cells and targets.
    """
    if not hasattr(model, "prediction_function"):
        raise ConfigError(
            f"{model.name} has no prediction that depends on the control cells through a network, "
            "so there is nothing to attribute; use a multi-task model (mtae, ...), gpo_vae or sams_vae."
        )
    if baseline not in ("zeros", "mean"):
        raise ConfigError(f"baseline must be 'zeros' or 'mean', got {baseline!r}.")
    if control.n_obs == 0:
        raise DataError("No control cells to attribute the prediction of.")
    genes = list(model.genes)  # type: ignore[attr-defined]
    if list(control.var_names) != genes:
        raise DataError(f"control's genes differ from the {len(genes)} genes {model.name} was trained on; subset it to model.genes.")
    predict = model.prediction_function(condition, dose)  # type: ignore[attr-defined]
    device = model.device  # type: ignore[attr-defined]
    x = torch.as_tensor(dense(control.X), dtype=torch.float32, device=device)

    def change(cells: torch.Tensor) -> torch.Tensor:
        return predict(cells) - cells

    with torch.no_grad():
        mean_change = change(x).mean(0).cpu().numpy()
    chosen = _targets(targets, genes, mean_change)
    return _integrated_gradients(change, x, genes, {g: genes.index(g) for g in chosen}, baseline, n_steps, "mean")


def attribute_crossmodal(
    model: Any,
    source: AnnData,
    *,
    targets: Sequence[str] | None = None,
    baseline: Baseline = "mean",
    n_steps: int = 32,
) -> pd.DataFrame:
    """Integrated-gradient attributions of a cross-modal prediction (e.g. each protein from the
    RNA; :class:`mtpert.models.crossmodal.MultimodalAE`) to the source features.

    Returns a table with one row per source feature and one column per target feature: the mean
    over ``source``'s cells of the absolute attribution (how much the feature moves the
    prediction, either way), so that ranking a column says which features drive that target.
    """
    if not hasattr(model, "prediction_function") or model.source_features is None:
        raise ConfigError(f"{getattr(model, 'name', model)} has no fitted differentiable prediction to attribute.")
    if baseline not in ("zeros", "mean"):
        raise ConfigError(f"baseline must be 'zeros' or 'mean', got {baseline!r}.")
    features = list(model.source_features)
    missing = [f for f in features if f not in source.var_names]
    if missing or source.n_obs == 0:
        raise DataError(f"source must hold cells with the {len(features)} features the model was fitted on (missing e.g. {missing[:3]}).")
    x = torch.as_tensor(dense(source[:, features].X), dtype=torch.float32, device=model.device)
    chosen = list(model.target_features) if targets is None else list(targets)
    unknown = [t for t in chosen if t not in model.target_features]
    if unknown:
        raise DataError(f"targets {unknown} are not among the model's target features.")
    index = {t: model.target_features.index(t) for t in chosen}
    return _integrated_gradients(model.prediction_function(), x, features, index, baseline, n_steps, "mean_abs")


def _integrated_gradients(
    function: Any, x: torch.Tensor, inputs: list[str], targets: dict[str, int], baseline: Baseline, n_steps: int, aggregate: str
) -> pd.DataFrame:
    """Integrated gradients of ``function``'s outputs ``targets`` (name -> column) at cells ``x``,
    per input, averaged over cells (``mean``, or ``mean_abs`` of each cell's attribution)."""
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        raise MissingDependencyError("Attributions need Captum: pip install 'mtpert[explain]' (or pip install captum).") from None
    reference = torch.zeros_like(x) if baseline == "zeros" else x.mean(0, keepdim=True).expand_as(x)
    method = IntegratedGradients(function)
    columns, worst = {}, 0.0
    for name, column in targets.items():
        attributions, delta = method.attribute(x, baselines=reference, target=column, n_steps=n_steps, return_convergence_delta=True)
        attributions = attributions.abs() if aggregate == "mean_abs" else attributions
        columns[name] = attributions.mean(0).detach().cpu().numpy()
        worst = max(worst, float(delta.abs().max()))
    table = pd.DataFrame(columns, index=pd.Index(inputs, name="input_gene"))
    table.columns.name = "target_gene"
    table.attrs["convergence"] = worst
    return table


def own_feature_ranks(attributions: pd.DataFrame, own: Mapping[str, str | None]) -> pd.DataFrame:
    """For each target (column) with a known own source feature (``own``: e.g. protein -> its
    coding gene) among the rows: that feature's rank by attribution (1: the largest) and the
    number of candidates. The check that an explanation means something: a protein should be
    driven by its own gene."""
    rows = []
    for target in attributions.columns:
        gene = own.get(target)
        if gene is None or gene not in attributions.index:
            continue
        column = attributions[target]
        rows.append({"target": target, "own": gene, "rank": int((column > column[gene]).sum()) + 1, "candidates": len(column)})
    return pd.DataFrame(rows, columns=["target", "own", "rank", "candidates"])


def _targets(targets: Sequence[str] | int, genes: list[str], mean_change: np.ndarray) -> list[str]:
    """The target genes: as given (checked), or the ``targets`` of largest absolute mean change."""
    if isinstance(targets, int):
        if targets < 1:
            raise ConfigError(f"targets must be at least 1 gene, got {targets}.")
        order = np.argsort(-np.abs(mean_change), kind="stable")[:targets]
        return [genes[i] for i in order]
    chosen = list(targets)
    unknown = [g for g in chosen if g not in genes]
    if unknown or not chosen:
        raise DataError(f"targets {unknown or chosen} are not among the model's {len(genes)} genes (e.g. {genes[:3]}).")
    return chosen
