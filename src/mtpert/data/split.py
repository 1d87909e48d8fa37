"""Out-of-distribution splits: what a model may train on, and what it is scored on.

Four protocols of the field, all with one target per (group, condition, dose):

* :func:`holdout_group` -- hold out every perturbed cell of one group, at every dose: a cell type,
  or the value of any other grouping column, e.g. a species (``group_key='species'``) for
  cross-species transfer, or a replicate (``group_key='replicate'``) to predict held-out cells of
  perturbations seen in training (the protocol of SAMS-VAE and GPO-VAE). The group's control
  cells stay visible: they are the input from which the model predicts the group's response.
* :func:`holdout_condition` -- hold out one condition at one dose in every group, to test
  interpolation (or extrapolation) to a dose never seen in training. The input of each target is
  again its group's control cells (dose ``spec.control_dose``), which stay in training; a model
  with a continuous dose encoding is asked for the unseen dose.
* :func:`holdout_combinations` -- hold out a random share of the combinations of a genetic screen
  (``"A+B"``) whose parts were applied alone, and train on the singles and the other combinations
  (the GEARS/CPA protocol), under several split seeds.
* :func:`train_val` -- nothing held out, for fitting a model to use rather than to score.

A (group, condition, dose) with fewer than ``min_cells`` cells is not scored, but its perturbed
cells are held out all the same; :attr:`Split.heldout` lists every held-out cell.

The remaining cells are divided into train and validation, stratified by group x condition and
seeded, so every run of a benchmark sees the same split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from anndata import AnnData

from mtpert.data.labels import check_labels
from mtpert.data.spec import (
    DEFAULT_MIN_CELLS,
    DatasetSpec,
    check_min_cells,
    fewer_cells_advice,
    require_groups,
)
from mtpert.errors import DataError


@dataclass(frozen=True, eq=False)
class Target:
    """One scored prediction task: perturb ``control`` cells of ``group`` into ``condition``."""

    group: str
    condition: str
    dose: float | None
    control: pd.Index
    truth: pd.Index

    def label(self) -> str:
        """Short human-readable name, e.g. ``'CD14 Mono -> stimulated'``."""
        dose = "" if self.dose is None else f" @ {self.dose:g}"
        return f"{self.group} -> {self.condition}{dose}"


@dataclass(frozen=True, eq=False)
class Split:
    """Cell names for training, validation and the held-out targets of one OOD split.

    ``heldout`` is every cell a model must never see during training: the targets' perturbed cells
    and those of groups too small to be scored.
    """

    train: pd.Index
    val: pd.Index
    targets: tuple[Target, ...]
    description: str
    heldout: pd.Index

    def subset(self, adata: AnnData, which: str) -> AnnData:
        """``adata`` restricted to ``'train'`` or ``'val'`` cells (a view)."""
        if which not in ("train", "val"):
            raise ValueError(f"which must be 'train' or 'val', not {which!r}")
        return adata[getattr(self, which)]


def heldout_mask(adata: AnnData, spec: DatasetSpec, group: str, *, group_key: str | None = None) -> np.ndarray:
    """Boolean mask of the perturbed cells of ``group``: the cells to exclude from any fitting."""
    key = group_key or spec.cell_type_key
    return (adata.obs[key].astype(str) == group).to_numpy() & ~spec.is_control(adata)


def condition_values(adata: AnnData, spec: DatasetSpec, mask: np.ndarray) -> list[tuple[str, float | None]]:
    """Distinct (condition, dose) pairs among the cells in ``mask``, control excluded."""
    obs = adata.obs.loc[mask & ~spec.is_control(adata)]
    if spec.dose_key is None:
        return [(c, None) for c in sorted(obs[spec.condition_key].astype(str).unique())]
    pairs = obs[[spec.condition_key, spec.dose_key]].astype({spec.condition_key: str}).drop_duplicates()
    return sorted((c, float(d)) for c, d in pairs.itertuples(index=False))


def _group_labels(adata: AnnData, key: str) -> np.ndarray:
    """``obs[key]`` as strings; a clear error if there is no such column."""
    if key not in adata.obs.columns:
        raise DataError(f"Group key '{key}' not in obs; available: {list(adata.obs.columns)}.")
    return adata.obs[key].astype(str).to_numpy()


def condition_mask(adata: AnnData, spec: DatasetSpec, condition: str, dose: float | None) -> np.ndarray:
    mask = (adata.obs[spec.condition_key].astype(str) == condition).to_numpy()
    if dose is not None and spec.dose_key is not None:
        mask &= np.isclose(adata.obs[spec.dose_key].to_numpy(dtype=float), dose)
    return mask


def _train_val(adata: AnnData, spec: DatasetSpec, keep: np.ndarray, val_fraction: float, seed: int, group_key: str):
    """Stratified (group x condition) seeded train/validation division of the cells in ``keep``."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    obs = adata.obs.loc[keep]
    strata = obs[group_key].astype(str) + "|" + obs[spec.condition_key].astype(str)
    if spec.dose_key is not None:
        strata = strata + "|" + obs[spec.dose_key].astype(str)
    rng = np.random.default_rng(seed)
    val_names: list[np.ndarray] = []
    for _, names in obs.index.to_series().groupby(strata.to_numpy(), sort=True):
        n_val = round(len(names) * val_fraction)
        if n_val and len(names) - n_val >= 1:
            val_names.append(rng.choice(names.to_numpy(), n_val, replace=False))
    val = pd.Index(np.concatenate(val_names)) if val_names else pd.Index([], dtype=object)
    in_val = obs.index.isin(val)
    return pd.Index(obs.index[~in_val]), pd.Index(obs.index[in_val])


def train_val(
    adata: AnnData, spec: DatasetSpec, *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[pd.Index, pd.Index]:
    """Train and validation cell names over every cell, nothing held out: the seeded division,
    stratified by cell type x condition (x dose), that :func:`holdout_group` makes of the rest."""
    spec.validate(adata)
    everything = np.ones(adata.n_obs, dtype=bool)
    return _train_val(adata, spec, everything, val_fraction, seed, spec.cell_type_key)


def holdout_group(
    adata: AnnData,
    spec: DatasetSpec,
    group: str,
    *,
    group_key: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_cells: int = DEFAULT_MIN_CELLS,
) -> Split:
    """Hold out every perturbed cell of ``group``; one target per (condition, dose) it has.

    Args:
        group: the held-out value of ``group_key`` (default: the spec's cell-type key).
        group_key: obs column to hold out by, e.g. a species column for cross-species transfer.
            A target then pools the group's cells of every cell type; score per cell type with
            :func:`mtpert.metrics.evaluate_prediction`, which groups by the spec's cell-type key.
        min_cells: fewest control cells the group needs, and perturbed cells a (condition, dose)
            needs to be scored; smaller ones are held out but not scored. At least
            :data:`mtpert.data.spec.MIN_CELLS_FLOOR`.
    """
    key = group_key or spec.cell_type_key
    spec.validate(adata)
    in_group = _group_labels(adata, key) == group
    if not in_group.any():
        raise DataError(
            f"No cells with obs['{key}'] == '{group}'; available: "
            f"{sorted(adata.obs[key].astype(str).unique())}."
        )
    conditions = condition_values(adata, spec, in_group)
    if not conditions:
        raise DataError(f"'{group}' has no perturbed cells, so there is nothing to hold out and score.")
    spec_for_group = spec if key == spec.cell_type_key else DatasetSpec(**{**spec.to_dict(), "cell_type_key": key})
    require_groups(adata, spec_for_group, group, [], min_cells=min_cells)

    control_names = pd.Index(adata.obs_names[in_group & spec.is_control(adata)])
    truths = {(c, d): pd.Index(adata.obs_names[in_group & condition_mask(adata, spec, c, d)]) for c, d in conditions}
    targets = tuple(Target(group, c, d, control_names, t) for (c, d), t in truths.items() if len(t) >= min_cells)
    if not targets:
        raise DataError(
            f"'{group}' has at most {max(map(len, truths.values()))} perturbed cells per condition"
            f"{' and dose' if spec.dose_key else ''}, fewer than the {min_cells} needed to hold it out and "
            f"score it. {fewer_cells_advice(min_cells)}"
        )
    held = heldout_mask(adata, spec, group, group_key=key)
    train, val = _train_val(adata, spec, ~held, val_fraction, seed, key)
    return Split(train, val, targets, f"hold out {key}={group}", pd.Index(adata.obs_names[held]))


def holdout_condition(
    adata: AnnData,
    spec: DatasetSpec,
    condition: str,
    *,
    dose: float | None = None,
    group_key: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_cells: int = DEFAULT_MIN_CELLS,
) -> Split:
    """Hold out one condition (at one dose, if the spec has doses) in every group.

    Each group of ``group_key`` (default: the spec's cell-type key) with at least ``min_cells``
    control and held-out cells becomes a target, predicted from its own control cells; the
    others' held-out cells are still removed from training but not scored. Other doses of the
    condition stay in training, so this asks a model for a dose between (or beyond) those it saw.
    ``min_cells`` must be at least :data:`mtpert.data.spec.MIN_CELLS_FLOOR`.
    """
    check_min_cells(min_cells)
    key = group_key or spec.cell_type_key
    spec.validate(adata)
    group = _group_labels(adata, key)
    # validated: one label per set of parts, so 'B+A' names the data's 'A+B'
    labels = {frozenset(spec.parts(c)): c for c in spec.conditions(adata)}
    condition = labels.get(frozenset(spec.parts(condition)), condition)
    if condition not in spec.conditions(adata):
        raise DataError(f"No perturbed cells with condition '{condition}'; available conditions: {spec.conditions(adata)}.")
    if spec.dose_key is None and dose is not None:
        raise DataError(f"dose={dose:g} given, but the spec has no dose key; set DatasetSpec(dose_key=...).")
    if spec.dose_key is not None:
        doses = spec.doses(adata, condition)
        if dose is None:
            raise DataError(
                f"The spec has a dose key ('{spec.dose_key}'); say which dose of '{condition}' to hold out "
                f"(dose=...; its doses: {doses})."
            )
        if not np.isclose(doses, dose).any():
            raise DataError(f"'{condition}' has no cells at dose {dose:g}; its doses: {doses}.")
    held = condition_mask(adata, spec, condition, dose) & ~spec.is_control(adata)
    control = spec.is_control(adata)
    targets = []
    for name in sorted(np.unique(group[held])):
        truth = adata.obs_names[held & (group == name)]
        ctrl = adata.obs_names[control & (group == name)]
        if len(truth) >= min_cells and len(ctrl) >= min_cells:
            targets.append(Target(name, condition, dose, pd.Index(ctrl), pd.Index(truth)))
    if not targets:
        raise DataError(
            f"No {key} has {min_cells} control and {min_cells} '{condition}' cells to score; "
            "lower min_cells (CLI: --min-cells) or pick another condition."
        )
    train, val = _train_val(adata, spec, ~held, val_fraction, seed, key)
    label = condition if dose is None else f"{condition} @ {dose:g}"
    return Split(train, val, tuple(targets), f"hold out condition {label}", pd.Index(adata.obs_names[held]))


def predictable_combinations(adata: AnnData, spec: DatasetSpec, *, min_cells: int = DEFAULT_MIN_CELLS) -> list[str]:
    """Combinations (labels with several parts) that have ``min_cells`` cells and each of whose
    parts was also applied alone to ``min_cells`` cells: those a model can be asked for after
    seeing only the parts (the "seen 2/2" combinations of GEARS)."""
    check_min_cells(min_cells)
    if spec.combination_separator is None:
        raise DataError(
            "The spec has no combination_separator, so no condition is a combination; set "
            "DatasetSpec(combination_separator='+') (CLI: --separator) if labels such as 'A+B' combine perturbations."
        )
    check_labels(adata, spec)  # one label per combination, so that a label stands for its parts
    perturbed = ~spec.is_control(adata)
    sizes = adata.obs.loc[perturbed, spec.condition_key].astype(str).value_counts()
    parts = {c: frozenset(spec.parts(c)) for c in sizes.index[sizes >= min_cells]}
    singles = {part for p in parts.values() if len(p) == 1 for part in p}  # applied alone
    return sorted(c for c, p in parts.items() if len(p) > 1 and p <= singles)


def holdout_combinations(
    adata: AnnData,
    spec: DatasetSpec,
    *,
    split_seed: int,
    fraction: float = 0.5,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_cells: int = DEFAULT_MIN_CELLS,
) -> Split:
    """Hold out a random ``fraction`` of the predictable combinations (drawn by ``split_seed``),
    in every group; train on the rest: every single perturbation and the other combinations.

    The protocol of GEARS and CPA for unseen combinations, asked of several split seeds: one
    target per held-out combination and group with ``min_cells`` cells, predicted from the group's
    control cells. Only combinations whose parts were each applied alone
    (:func:`predictable_combinations`) are held out, so every model, the additive baseline
    included, can be asked for them; the others stay in training.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"fraction must be in (0, 1), the share of combinations held out; got {fraction}.")
    spec.validate(adata)
    candidates = predictable_combinations(adata, spec, min_cells=min_cells)
    if len(candidates) < 2:
        raise DataError(
            f"Holding out combinations needs at least two with {min_cells} cells whose parts were each applied "
            f"alone to {min_cells} cells; found {candidates}. Lower --min-cells, or use another split."
        )
    n_held = min(len(candidates) - 1, max(1, round(fraction * len(candidates))))  # some stay to learn from
    chosen = sorted(np.random.default_rng(split_seed).choice(candidates, n_held, replace=False))
    condition = adata.obs[spec.condition_key].astype(str).to_numpy()
    held = np.isin(condition, chosen)  # validated: each combination (set of parts) has one label
    group = _group_labels(adata, spec.cell_type_key)
    control = spec.is_control(adata)
    targets = []
    for name in sorted(np.unique(group[held])):
        ctrl = pd.Index(adata.obs_names[control & (group == name)])
        for combination in chosen:
            truth = pd.Index(adata.obs_names[(condition == combination) & (group == name)])
            if len(truth) >= min_cells and len(ctrl) >= min_cells:
                targets.append(Target(name, combination, None, ctrl, truth))
    if not targets:
        raise DataError(f"No group has {min_cells} control cells and {min_cells} cells of a held-out combination.")
    train, val = _train_val(adata, spec, ~held, val_fraction, seed, spec.cell_type_key)
    description = f"hold out {len(chosen)} of {len(candidates)} combinations (split seed {split_seed})"
    return Split(train, val, tuple(targets), description, pd.Index(adata.obs_names[held]))


def single_dose(adata: AnnData, spec: DatasetSpec, dose: float) -> tuple[AnnData, DatasetSpec]:
    """The control cells and the cells at ``dose``, and ``spec`` without its dose key.

    What a single-condition model (scGen, scPreGAN, ...) is trained on for one dose of a dose
    series, as the thesis ran such baselines: one model per dose, each asked to predict
    ``condition`` without a dose. A view of ``adata``.
    """
    if spec.dose_key is None:
        raise DataError("The spec has no dose key, so the data is already single-dose.")
    doses = adata.obs[spec.dose_key].to_numpy(dtype=float)
    if not np.isclose(doses[~spec.is_control(adata)], dose).any():
        raise DataError(f"No perturbed cells at dose {dose:g}; doses: {spec.doses(adata)}.")
    keep = np.isclose(doses, dose) | spec.is_control(adata)
    return adata[keep], replace(spec, dose_key=None)


def eligible_groups(
    adata: AnnData, spec: DatasetSpec, *, group_key: str | None = None, min_cells: int = DEFAULT_MIN_CELLS
) -> pd.DataFrame:
    """Table of each group's control and perturbed cell counts and whether it can be held out.

    Columns: ``n_control``, ``n_perturbed`` (most cells of any of its conditions, at any one dose
    where the spec has doses: a group is eligible, as :func:`holdout_group` accepts it, when one
    of its targets can be scored), ``eligible``, ``reason`` (empty when eligible). ``min_cells``
    must be at least :data:`mtpert.data.spec.MIN_CELLS_FLOOR`, so a group without control cells is
    never eligible.
    """
    check_min_cells(min_cells)
    key = group_key or spec.cell_type_key
    obs = adata.obs
    control = spec.is_control(adata)
    groups = obs[key].astype(str)
    rows = []
    for group in sorted(groups.unique()):
        in_group = (groups == group).to_numpy()
        n_ctrl = int((in_group & control).sum())
        perturbed = obs.loc[in_group & ~control]
        labels = perturbed[spec.condition_key].astype(str)
        if spec.dose_key is not None:
            labels = labels + "@" + perturbed[spec.dose_key].astype(str)
        per_condition = labels.value_counts()
        n_pert = int(per_condition.max()) if len(per_condition) else 0
        reason = ""
        if n_ctrl < min_cells:
            reason = f"{n_ctrl} control cells < {min_cells}"
        elif n_pert < min_cells:
            reason = f"{n_pert} perturbed cells < {min_cells}"
        rows.append({key: group, "n_control": n_ctrl, "n_perturbed": n_pert, "eligible": not reason, "reason": reason})
    return pd.DataFrame(rows).set_index(key)


def condition_label(condition: str, dose: float | None) -> str:
    """``'condition'``, or ``'condition@dose'`` with the dose as Python prints a float: how a
    benchmark names a held-out (condition, dose)."""
    return condition if dose is None else f"{condition}@{float(dose)}"


def eligible_conditions(
    adata: AnnData, spec: DatasetSpec, *, group_key: str | None = None, min_cells: int = DEFAULT_MIN_CELLS
) -> pd.DataFrame:
    """Table of each (condition, dose) and whether :func:`holdout_condition` can hold it out.

    Indexed by :func:`condition_label`; columns ``condition``, ``dose``, ``n_groups`` (groups of
    ``group_key`` with ``min_cells`` control and ``min_cells`` such cells: its scored targets),
    ``eligible`` and ``reason`` (empty when eligible). ``min_cells`` must be at least
    :data:`mtpert.data.spec.MIN_CELLS_FLOOR`.
    """
    check_min_cells(min_cells)
    key = group_key or spec.cell_type_key
    groups = _group_labels(adata, key)
    control = spec.is_control(adata)
    n_control = pd.Series(groups[control]).value_counts()
    rows = []
    for condition, dose in condition_values(adata, spec, np.ones(adata.n_obs, dtype=bool)):
        held = pd.Series(groups[condition_mask(adata, spec, condition, dose) & ~control]).value_counts()
        n_groups = int(((held >= min_cells) & (n_control.reindex(held.index, fill_value=0) >= min_cells)).sum())
        reason = "" if n_groups else f"no {key} has {min_cells} control and {min_cells} such cells"
        rows.append({"label": condition_label(condition, dose), "condition": condition, "dose": dose,
                     "n_groups": n_groups, "eligible": not reason, "reason": reason})  # fmt: skip
    return pd.DataFrame(rows).set_index("label")
