"""Score predictions: one target from three sets of cells, or every group of a prediction file.

Per-target metrics score each target's prediction on its own (:func:`evaluate`,
:func:`evaluate_prediction`); across-target metrics score all predictions of a cell type together
against all its true conditions (:func:`evaluate_across`, :func:`rank_prediction`). Results are
long tables, one row per metric (and per group), with the metric's best value and direction
alongside, so they concatenate across models, targets and seeds without reshaping.
:func:`detectable_effects` says, from the data alone, which conditions change expression at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from numpy.typing import ArrayLike

from mtpert.data.spec import DatasetSpec
from mtpert.errors import DataError
from mtpert.metrics.effect import Relabellings
from mtpert.metrics.inputs import Cells, Condition, load_sets
from mtpert.metrics.pair import DEFAULT_N_PCS, MAX_CELLS_FOR_SPACE, EvalPair, SharedControl, Space
from mtpert.metrics.rank import Distance, condition_rank
from mtpert.metrics.registry import METRICS, SCOPE_WORDS, SCORED_BY, Metric, Scope

RESULT_COLUMNS = ["metric", "value", "spread", "best", "higher_is_better"]
SpaceChoice = Literal["target", "group"]
"""Where :func:`evaluate_prediction` measures distances: each target's own PCA, or one per group."""


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
    control: Cells | SharedControl,
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
        control: the target's control cells (or a :class:`~mtpert.metrics.pair.SharedControl`
            of many targets); truth: its real perturbed cells; pred: the predicted cells.
            Log-normalized expression over the same genes (AnnData or arrays, see
            :class:`EvalPair`).
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
    space: SpaceChoice = "target",
    progress: bool = False,
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
        space: where the distances are measured. ``"target"``: each target's own PCA of its
            control ∪ truth, as :func:`evaluate` does. ``"group"``: one PCA per cell type, of its
            control ∪ all its true perturbed cells (at most
            :data:`~mtpert.metrics.pair.MAX_CELLS_FOR_SPACE`, a seeded random subset), shared by
            its targets, whose control-only work (:class:`~mtpert.metrics.pair.SharedControl`) is
            then done once: use it to score the many perturbations of a screen. The two agree
            where a cell type has one target; every other metric is the same in both, but
            distances (relative ones most, where the true change is small) are not comparable
            across the two: report the space with the scores.
        progress: show a progress bar over the targets.

    Returns:
        The :func:`evaluate` table for each group, prefixed by ``cell_type``, ``condition``,
        ``dose`` (only when ``spec.dose_key`` is set), ``n_control``, ``n_truth`` and ``n_pred``.

    Raises:
        DataError: a missing obs key, a requested group absent from the prediction, or a
            predicted group with no real perturbed or control cells in ``adata_truth``.
    """
    chosen = [m.name for m in select_metrics(metrics)]  # fail on a typo before any work
    if space not in ("target", "group"):
        raise DataError(f"space must be 'target' or 'group', got {space!r}.")
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
    predicted = _predicted_groups(adata_pred, spec, groups)
    truth_rows, pred_rows = _rows_by_group(adata_truth, spec), _rows_by_group(adata_pred, spec)
    controls = _control_rows(adata_truth, spec)
    for group in predicted:
        n_truth, n_control = (
            len(truth_rows.get(_key(group), ())),
            len(controls.get(group.cell_type, ())),
        )
        if n_truth == 0 or n_control == 0:
            which = "perturbed" if n_truth == 0 else f"control ('{spec.control}')"
            raise DataError(
                f"The prediction has {len(pred_rows[_key(group)])} cells for {group.label()}, but "
                f"adata_truth has no {which} cells of '{group.cell_type}' to score them against. "
                "Restrict the prediction (or pass groups=...) to groups with real cells, or check "
                f"the labels in adata_pred.obs['{spec.condition_key}']."
            )
    tables: dict[Condition, pd.DataFrame] = {}
    with _progress_bar(len(predicted), enabled=progress) as advance:
        for cell_type in sorted({g.cell_type for g in predicted}):
            mine = [g for g in predicted if g.cell_type == cell_type]
            control: Cells | SharedControl
            if space == "group":
                perturbed = [
                    r
                    for (ct, c, _), r in truth_rows.items()
                    if ct == cell_type and c != spec.control
                ]
                control = _shared_control(
                    adata_truth, controls[cell_type], perturbed, cell_type, n_pcs, seed
                )
            else:
                control = adata_truth[controls[cell_type]]
            # by truth size: targets of one size share the relabellings of the effect test
            for group in sorted(mine, key=lambda g: len(truth_rows[_key(g)])):
                truth, pred = (
                    adata_truth[truth_rows[_key(group)]],
                    adata_pred[pred_rows[_key(group)]],
                )
                try:
                    table = evaluate(control, truth, pred, metrics=chosen, n_pcs=n_pcs, seed=seed)
                except DataError as err:
                    raise DataError(f"{group.label()}: {err}") from err
                ids = {"cell_type": group.cell_type, "condition": group.condition}
                if spec.dose_key is not None:
                    ids["dose"] = group.dose
                ids |= {
                    "n_control": len(controls[cell_type]),
                    "n_truth": truth.n_obs,
                    "n_pred": pred.n_obs,
                }
                tables[group] = table.assign(**ids)[[*ids, *RESULT_COLUMNS]]
                advance()
    return pd.concat([tables[g] for g in predicted], ignore_index=True)


def _shared_control(
    adata: AnnData,
    control_rows: np.ndarray,
    perturbed: list[np.ndarray],
    cell_type: str,
    n_pcs: int,
    seed: int,
) -> SharedControl:
    """The control cells of ``cell_type`` with the space of its control ∪ ``perturbed`` cells."""
    rows = np.concatenate([control_rows, *perturbed])
    if len(rows) > MAX_CELLS_FOR_SPACE:  # keep the order: control first
        rows = rows[
            np.sort(
                np.random.default_rng(seed).choice(len(rows), MAX_CELLS_FOR_SPACE, replace=False)
            )
        ]
    _, fit_on = load_sets({f"cells of '{cell_type}'": adata[rows]})
    space = Space.fit(list(fit_on.values()), n_pcs, seed=seed)
    return SharedControl(adata[control_rows], space)


def _key(group: Condition) -> tuple[str, str, float | None]:
    return (group.cell_type, group.condition, _dose_key(group.dose))


def _dose_key(dose: float | None) -> float | None:
    """A dose rounded to 6 significant digits, so that doses equal as ``np.isclose`` sees them
    find each other in a dict."""
    return None if dose is None else float(f"{dose:.6g}")


def _rows_by_group(adata: AnnData, spec: DatasetSpec) -> dict[tuple, np.ndarray]:
    """Row positions of each (cell type, condition, dose or None) of ``adata``, found in one pass."""
    obs = adata.obs
    labels = pd.DataFrame(
        {
            "cell_type": obs[spec.cell_type_key].astype(str).to_numpy(),
            "condition": obs[spec.condition_key].astype(str).to_numpy(),
            "dose": [_dose_key(d) for d in obs[spec.dose_key].astype(float)]
            if spec.dose_key
            else 0.0,
        }
    )
    rows = labels.groupby(["cell_type", "condition", "dose"], sort=False).indices
    return {(ct, cond, dose if spec.dose_key else None): r for (ct, cond, dose), r in rows.items()}


def _control_rows(adata: AnnData, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """Row positions of each cell type's control cells."""
    is_control = spec.is_control(adata)
    cell_types = adata.obs[spec.cell_type_key].astype(str).to_numpy()
    return {
        ct: np.flatnonzero(is_control & (cell_types == ct))
        for ct in np.unique(cell_types[is_control])
    }


@contextmanager
def _progress_bar(total: int, *, enabled: bool) -> Iterator[Callable[[], None]]:
    """A callable that advances a progress bar of ``total`` targets (does nothing when not ``enabled``)."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("targets", total=total)
        yield lambda: bar.advance(task)


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
    return _score_across(
        adata_truth, adata_pred, spec, groups, select_metrics(metrics, scope="across_targets")
    )


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
    group_rows, controls = _rows_by_group(adata, spec), _control_rows(adata, spec)
    tested = [g for g in _predicted_groups(adata, spec, groups) if g.cell_type in controls]
    relabellings: dict[str, Relabellings] = {}
    rows = {}
    # by size: the truths of one size share the relabellings of the test
    for group in sorted(tested, key=lambda g: len(group_rows[_key(g)])):
        if group.cell_type not in relabellings:
            control = adata[controls[group.cell_type]]
            _, data = load_sets({f"control of '{group.cell_type}'": control})
            relabellings[group.cell_type] = Relabellings(data.popitem()[1])
        _, data = load_sets({group.label(): adata[group_rows[_key(group)]]})
        truth = data.popitem()[1]
        test = relabellings[group.cell_type].test(truth)
        ids = {"cell_type": group.cell_type, "condition": group.condition}
        if spec.dose_key is not None:
            ids["dose"] = group.dose
        n_control = len(relabellings[group.cell_type].control)
        rows[group] = (
            ids
            | {"n_control": n_control, "n_truth": len(truth), "distance": test.distance}
            | {"noise": test.noise, "ratio": test.ratio, "p_value": test.p_value}
            | {"detectable": test.detectable}
        )
    return pd.DataFrame([rows[g] for g in tested])


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
    rank = replace(
        METRICS["rank"], function=partial(condition_rank, n_degs=n_degs, distance=distance)
    )
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
    truth_rows, pred_rows = _rows_by_group(adata_truth, spec), _rows_by_group(adata_pred, spec)
    controls = _control_rows(adata_truth, spec)
    rows = []
    for cell_type in sorted({g.cell_type for g in predicted}):
        mine = [g for g in predicted if g.cell_type == cell_type]
        control = adata_truth[controls.get(cell_type, [])]
        in_type = _of_type(adata_truth, spec, cell_type) & ~spec.is_control(adata_truth)
        keys = _predicted_groups(adata_truth[in_type], spec, None) if in_type.any() else []
        truths = {g: adata_truth[truth_rows[_key(g)]] for g in keys}
        preds = {g: adata_pred[pred_rows[_key(g)]] for g in mine}
        scored = []
        for metric in metrics:
            try:
                scored.append(
                    (metric, metric.across(truths, preds, control if control.n_obs else None))
                )
            except DataError as err:
                raise DataError(
                    f"Metric '{metric.name}' across the conditions of '{cell_type}': {err}"
                ) from err
        for group in mine:
            ids = [
                group.cell_type,
                group.condition,
                *([group.dose] if spec.dose_key is not None else []),
            ]
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
