"""Score predictions: one target from three sets of cells, or every group of a prediction file.

Per-target metrics score each target's prediction on its own (:func:`evaluate`,
:func:`evaluate_prediction`); across-target metrics score all predictions of a cell type together
against all its true conditions (:func:`evaluate_across`, :func:`rank_prediction`). Results are
long tables, one row per metric (and per group), with the metric's best value and direction
alongside, so they concatenate across models, targets and seeds without reshaping.
:func:`detectable_effects` says, from the data alone, which conditions change expression at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from functools import partial

import numpy as np
import pandas as pd
from anndata import AnnData
from numpy.typing import ArrayLike

from mtpert.data.spec import DatasetSpec
from mtpert.errors import DataError
from mtpert.metrics.effect import effect_test
from mtpert.metrics.inputs import Cells, Condition, load_sets
from mtpert.metrics.pair import DEFAULT_N_PCS, EvalPair
from mtpert.metrics.rank import Distance, condition_rank
from mtpert.metrics.registry import METRICS, SCOPE_WORDS, SCORED_BY, Metric, Scope

RESULT_COLUMNS = ["metric", "value", "spread", "best", "higher_is_better"]


def select_metrics(
    names: Iterable[str] | str | None = None, *, scope: Scope = "per_target"
) -> tuple[Metric, ...]:
    """The registered metrics called ``names`` (all of ``scope`` when None), in registry order;
    a name of another scope is refused, naming the function that scores it."""
    if names is None:
        return tuple(m for m in METRICS.values() if m.scope == scope)
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise DataError(
            f"Unknown metric(s) {unknown}; available: {list(METRICS)} (see list_metrics())."
        )
    other = [n for n in names if METRICS[n].scope != scope]
    if other:
        theirs = METRICS[other[0]].scope
        raise DataError(
            f"Metric(s) {other} are computed {SCOPE_WORDS[theirs]}, not {SCOPE_WORDS[scope]}; "
            f"score them with {SCORED_BY[theirs]}."
        )
    return tuple(m for m in METRICS.values() if m.name in names)


def score(pair: EvalPair, metrics: Iterable[str] | str | None = None) -> pd.DataFrame:
    """Long table of ``metrics`` (all when None) on an existing :class:`EvalPair`."""
    rows = [(m.name, *m(pair), m.best, m.higher_is_better) for m in select_metrics(metrics)]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def evaluate(
    control: Cells,
    truth: Cells,
    pred: Cells,
    *,
    metrics: Iterable[str] | str | None = None,
    genes: ArrayLike | None = None,
    n_pcs: int = DEFAULT_N_PCS,
    seed: int = 0,
) -> pd.DataFrame:
    """Score a prediction of one target's perturbed cells.

    Args:
        control: the target's control cells; truth: its real perturbed cells; pred: the
            predicted cells. Log-normalized expression over the same genes (AnnData or arrays,
            see :class:`EvalPair`).
        metrics: names of metrics to compute (:func:`list_metrics`); all when None.
        genes: gene names of array inputs.
        n_pcs: most principal components of the distance space.
        seed: seed of the bootstrap resamples.

    Returns:
        Columns ``metric``, ``value``, ``spread`` (std over resamples for ``*_boot`` metrics,
        NaN otherwise), ``best``, ``higher_is_better``.
    """
    pair = EvalPair(control, truth, pred, genes=genes, n_pcs=n_pcs, seed=seed)
    return score(pair, metrics)


def evaluate_prediction(
    adata_truth: AnnData,
    adata_pred: AnnData,
    spec: DatasetSpec,
    *,
    groups: Iterable[str] | None = None,
    metrics: Iterable[str] | str | None = None,
    n_pcs: int = DEFAULT_N_PCS,
    seed: int = 0,
) -> pd.DataFrame:
    """Score every (cell type, condition[, dose]) present in a prediction against the real cells.

    Args:
        adata_truth: real control and perturbed cells, log-normalized, labelled by ``spec``.
        adata_pred: predicted cells with the same obs keys; its condition (and dose) column says
            what each cell is a prediction of. Cells labelled control are ignored (many tools
            return the input control cells alongside their predictions).
        spec: obs keys of both AnnDatas.
        groups: cell types to score; all cell types in the prediction when None.
        metrics, n_pcs, seed: as in :func:`evaluate`.

    Returns:
        The :func:`evaluate` table for each group, prefixed by ``cell_type``, ``condition``,
        ``dose`` (only when ``spec.dose_key`` is set), ``n_control``, ``n_truth`` and ``n_pred``.

    Raises:
        DataError: a missing obs key, a requested group absent from the prediction, or a
            predicted group with no real perturbed or control cells in ``adata_truth``.
    """
    chosen = [m.name for m in select_metrics(metrics)]  # fail on a typo before any work
    for adata, what in ((adata_truth, "adata_truth"), (adata_pred, "adata_pred")):
        missing = [
            k
            for k in (spec.cell_type_key, spec.condition_key, spec.dose_key)
            if k and k not in adata.obs
        ]
        if missing:
            raise DataError(
                f"{what}.obs lacks {missing}; available columns: {list(adata.obs.columns)}. "
                "Both AnnDatas must carry the keys named in the DatasetSpec."
            )
    tables = []
    for group in _predicted_groups(adata_pred, spec, groups):
        control = adata_truth[
            _of_type(adata_truth, spec, group.cell_type) & spec.is_control(adata_truth)
        ]
        truth = adata_truth[_in_group(adata_truth, spec, group)]
        pred = adata_pred[_in_group(adata_pred, spec, group)]
        if truth.n_obs == 0 or control.n_obs == 0:
            which = "perturbed" if truth.n_obs == 0 else f"control ('{spec.control}')"
            raise DataError(
                f"The prediction has {pred.n_obs} cells for {group.label()}, but adata_truth has "
                f"no {which} cells of '{group.cell_type}' to score them against. Restrict the "
                "prediction (or pass groups=...) to groups with real cells, or check the labels "
                f"in adata_pred.obs['{spec.condition_key}']."
            )
        try:
            table = evaluate(control, truth, pred, metrics=chosen, n_pcs=n_pcs, seed=seed)
        except DataError as err:
            raise DataError(f"{group.label()}: {err}") from err
        ids = {"cell_type": group.cell_type, "condition": group.condition}
        if spec.dose_key is not None:
            ids["dose"] = group.dose
        ids |= {"n_control": control.n_obs, "n_truth": truth.n_obs, "n_pred": pred.n_obs}
        tables.append(table.assign(**ids)[[*ids, *RESULT_COLUMNS]])
    return pd.concat(tables, ignore_index=True)


def evaluate_across(
    adata_truth: AnnData,
    adata_pred: AnnData,
    spec: DatasetSpec,
    *,
    groups: Iterable[str] | None = None,
    metrics: Iterable[str] | str | None = None,
) -> pd.DataFrame:
    """Score the across-target metrics (e.g. ``rank``) of every cell type of a prediction file.

    For each cell type in ``adata_pred``, its predicted (condition, dose) groups are scored
    together against every (condition, dose) of that cell type in ``adata_truth``, with its
    control cells there as control.

    Args:
        adata_truth, adata_pred, spec, groups: as in :func:`evaluate_prediction`.
        metrics: names of across-target metrics (:func:`list_metrics`, scope
            ``across_targets``); all of them when None.

    Returns:
        One row per predicted (cell type, condition[, dose]) and metric: ``cell_type``,
        ``condition``, ``dose`` (when the spec has doses), ``metric``, ``value``, ``spread``
        (NaN), ``best`` and ``higher_is_better``.
    """
    return _score_across(adata_truth, adata_pred, spec, groups, select_metrics(metrics, scope="across_targets"))


def detectable_effects(
    adata: AnnData, spec: DatasetSpec, *, groups: Iterable[str] | None = None
) -> pd.DataFrame:
    """Which conditions of the data change expression detectably, each against its cell type's
    control cells (the permutation test of :mod:`mtpert.metrics.effect`, as metric
    ``detectable`` applies it to a held-out target).

    Args:
        adata: log-normalized control and perturbed cells labelled by ``spec``.
        spec: its obs keys.
        groups: cell types to test; all when None.

    Returns:
        One row per (cell type, condition[, dose]) with control cells: ``cell_type``,
        ``condition``, ``dose`` (when the spec has doses), ``n_control``, ``n_truth``,
        ``distance`` (of the mean from the control mean), ``noise`` (its root mean square under
        relabelling), ``ratio`` (distance over noise), ``p_value`` and ``detectable``.
    """
    rows = []
    for group in _predicted_groups(adata, spec, groups):
        control = adata[_of_type(adata, spec, group.cell_type) & spec.is_control(adata)]
        if control.n_obs == 0:
            continue
        truth = adata[_in_group(adata, spec, group)]
        _, data = load_sets({f"control of '{group.cell_type}'": control, group.label(): truth})
        test = effect_test(*data.values())
        ids = {"cell_type": group.cell_type, "condition": group.condition}
        if spec.dose_key is not None:
            ids["dose"] = group.dose
        rows.append(
            ids
            | {"n_control": control.n_obs, "n_truth": truth.n_obs, "distance": test.distance}
            | {"noise": test.noise, "ratio": test.ratio, "p_value": test.p_value}
            | {"detectable": test.detectable}
        )
    return pd.DataFrame(rows)


def rank_prediction(
    adata_truth: AnnData,
    adata_pred: AnnData,
    spec: DatasetSpec,
    *,
    groups: Iterable[str] | None = None,
    n_degs: int | None = None,
    distance: Distance = "euclidean",
) -> pd.DataFrame:
    """:func:`evaluate_across` of metric ``rank`` alone, with the options of
    :func:`~mtpert.metrics.condition_rank` (``n_degs``, ``distance``)."""
    rank = replace(METRICS["rank"], function=partial(condition_rank, n_degs=n_degs, distance=distance))
    return _score_across(adata_truth, adata_pred, spec, groups, (rank,))


def _score_across(
    adata_truth: AnnData,
    adata_pred: AnnData,
    spec: DatasetSpec,
    groups: Iterable[str] | None,
    metrics: Iterable[Metric],
) -> pd.DataFrame:
    """Rows of each across-target metric of ``metrics`` for every predicted group, by cell type."""
    predicted = _predicted_groups(adata_pred, spec, groups)
    id_columns = ["cell_type", "condition", *(["dose"] if spec.dose_key is not None else [])]
    rows = []
    for cell_type in sorted({g.cell_type for g in predicted}):
        mine = [g for g in predicted if g.cell_type == cell_type]
        in_type = _of_type(adata_truth, spec, cell_type)
        control = adata_truth[in_type & spec.is_control(adata_truth)]
        perturbed = adata_truth[in_type & ~spec.is_control(adata_truth)]
        keys = _predicted_groups(perturbed, spec, None) if perturbed.n_obs else []
        truths = {g: adata_truth[_in_group(adata_truth, spec, g)] for g in keys}
        preds = {g: adata_pred[_in_group(adata_pred, spec, g)] for g in mine}
        scored = []
        for metric in metrics:
            try:
                scored.append((metric, metric.across(truths, preds, control if control.n_obs else None)))
            except DataError as err:
                raise DataError(
                    f"Metric '{metric.name}' across the conditions of '{cell_type}': {err}"
                ) from err
        for group in mine:
            ids = [group.cell_type, group.condition, *([group.dose] if spec.dose_key is not None else [])]
            for metric, scores in scored:
                rows.append(
                    [*ids, metric.name, scores[group], np.nan, metric.best, metric.higher_is_better]
                )
    return pd.DataFrame(rows, columns=[*id_columns, *RESULT_COLUMNS])


def _predicted_groups(
    adata_pred: AnnData, spec: DatasetSpec, groups: Iterable[str] | None
) -> list[Condition]:
    """Distinct (cell type, condition[, dose]) of the non-control predicted cells, sorted."""
    obs = adata_pred.obs.loc[~spec.is_control(adata_pred)]
    if obs.empty:
        raise DataError(
            f"adata_pred has no predicted cells: every cell is labelled control ('{spec.control}') "
            f"in obs['{spec.condition_key}']."
        )
    cell_types = obs[spec.cell_type_key].astype(str)
    if groups is not None:
        wanted = [str(g) for g in groups]
        absent = sorted(set(wanted) - set(cell_types))
        if absent:
            raise DataError(
                f"Cell type(s) {absent} are not in the prediction; it predicts "
                f"{sorted(set(cell_types))}."
            )
        obs = obs.loc[cell_types.isin(wanted).to_numpy()]
    keys = pd.DataFrame(
        {
            "cell_type": obs[spec.cell_type_key].astype(str),
            "condition": obs[spec.condition_key].astype(str),
            "dose": obs[spec.dose_key].astype(float) if spec.dose_key else np.nan,
        }
    ).drop_duplicates()
    return sorted(
        Condition(ct, cond, None if spec.dose_key is None else float(dose), spec.parts(cond))
        for ct, cond, dose in keys.itertuples(index=False)
    )


def _of_type(adata: AnnData, spec: DatasetSpec, cell_type: str) -> np.ndarray:
    return (adata.obs[spec.cell_type_key].astype(str) == cell_type).to_numpy()


def _in_group(adata: AnnData, spec: DatasetSpec, group: Condition) -> np.ndarray:
    """Mask of the cells of ``group``'s cell type, condition and (if any) dose."""
    mask = _of_type(adata, spec, group.cell_type)
    mask &= (adata.obs[spec.condition_key].astype(str) == group.condition).to_numpy()
    if group.dose is not None:
        mask &= np.isclose(adata.obs[spec.dose_key].to_numpy(dtype=float), group.dose)
    return mask
