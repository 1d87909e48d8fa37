"""Dataset spec: which obs columns hold the cell type, condition, dose and batch.

Nothing in mtpert hard-codes an obs key; every function that needs one takes a
:class:`DatasetSpec`. ``spec.validate(adata)`` checks an AnnData against it once, up front, so
that a wrong key or a broken matrix fails with a message that names the fix rather than deep
inside a model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from mtpert.data.backed import on_disk
from mtpert.data.labels import check_labels, check_spec, parse_label
from mtpert.errors import DataError

_LATER_FIELDS = ("combination_separator", "guide_key")
"""DatasetSpec fields added after run ids were first made from specs (left out of ``to_dict`` when unset)."""

DEFAULT_MIN_CELLS = 20
"""Fewest cells on each side (control and perturbed) for a group to serve as a held-out target."""

MIN_CELLS_FLOOR = 2
"""Smallest ``min_cells`` accepted: a held-out group needs control cells to predict from and
perturbed cells to score, and scoring needs a mean and a spread of each (two cells)."""


@dataclass(frozen=True)
class DatasetSpec:
    """Names of the obs columns that describe a perturbation experiment.

    Attributes:
        cell_type_key: obs column of the unit that is held out (a cell type, or a species).
        condition_key: obs column of the perturbation label.
        control: value of ``condition_key`` that marks unperturbed cells.
        dose_key: optional numeric obs column with the dose of each cell.
        control_dose: dose of control cells when ``dose_key`` is set.
        batch_key: optional obs column with donor or batch.
        combination_separator: where one condition label combines several perturbations (a
            genetic screen's ``"KLF1+MAP2K6"``), the text between them, e.g. ``"+"``; None:
            every label is one perturbation.
        guide_key: optional obs column naming each cell's guide RNA (pooled screens).
    """

    cell_type_key: str = "cell_type"
    condition_key: str = "condition"
    control: str = "control"
    dose_key: str | None = None
    control_dose: float = 0.0
    batch_key: str | None = None
    combination_separator: str | None = None
    guide_key: str | None = None

    def __post_init__(self) -> None:
        check_spec(self)  # a separator or control label that labels cannot be read with

    @property
    def obs_keys(self) -> list[str]:
        """Every obs column the spec names."""
        keys = [self.cell_type_key, self.condition_key, self.dose_key, self.batch_key, self.guide_key]
        return [k for k in keys if k is not None]

    def to_dict(self) -> dict[str, object]:
        """Plain-dict form, for saving alongside models and results. Fields added since the
        first release appear only when set, so the ids of runs made before stay the same."""
        values = asdict(self)
        return {k: v for k, v in values.items() if k not in _LATER_FIELDS or v is not None}

    def parts(self, condition: str) -> tuple[str, ...]:
        """The single perturbations a condition label combines (``"A+B"`` -> ``("A", "B")``),
        read by :func:`mtpert.data.labels.parse_label`: without surrounding whitespace or parts
        that are the control; a label of one perturbation, or the control, is its own one part.
        A label that cannot be read unambiguously (``"A+"``, ``"A+A"``) raises
        :class:`DataError`."""
        return parse_label(condition, self) or (self.control,)

    def perturbations(self, adata: AnnData) -> list[str]:
        """Sorted distinct single perturbations of the data's conditions (combinations split)."""
        return sorted({p for c in self.conditions(adata) for p in self.parts(c)})

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> DatasetSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise DataError(f"Unknown DatasetSpec fields {sorted(unknown)}.")
        return cls(**values)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ accessors
    def is_control(self, adata: AnnData) -> np.ndarray:
        """Boolean mask of control cells."""
        return (adata.obs[self.condition_key].astype(str) == self.control).to_numpy()

    def cell_types(self, adata: AnnData) -> list[str]:
        """Sorted distinct values of the cell-type column."""
        return sorted(adata.obs[self.cell_type_key].astype(str).unique())

    def conditions(self, adata: AnnData) -> list[str]:
        """Sorted distinct perturbation labels, control excluded."""
        labels = adata.obs[self.condition_key].astype(str).unique()
        return sorted(c for c in labels if c != self.control)

    def doses(self, adata: AnnData, condition: str | None = None) -> list[float]:
        """Sorted distinct doses of the perturbed cells (of ``condition``, if given)."""
        if self.dose_key is None:
            raise DataError("The spec has no dose_key, so the data has no doses; set DatasetSpec(dose_key=...).")
        perturbed = ~self.is_control(adata)
        if condition is not None:
            perturbed &= (adata.obs[self.condition_key].astype(str) == condition).to_numpy()
        return sorted({float(d) for d in adata.obs.loc[perturbed, self.dose_key]})

    def counts_table(self, adata: AnnData) -> pd.DataFrame:
        """Cells per cell type (rows) and condition (columns), control first."""
        obs = adata.obs
        table = pd.crosstab(obs[self.cell_type_key].astype(str), obs[self.condition_key].astype(str))
        ordered = [self.control] + [c for c in table.columns if c != self.control]
        return table.reindex(columns=[c for c in ordered if c in table.columns], fill_value=0)

    # ------------------------------------------------------------------ validation
    def validate(self, adata: AnnData, *, require_perturbed: bool = True) -> None:
        """Raise :class:`DataError` naming the problem and its fix if ``adata`` does not fit.

        Checks: unique cell names, the named obs keys exist, the cell-type/condition columns have
        no missing values, condition labels that read unambiguously and are in canonical form
        (:func:`mtpert.data.labels.check_labels`; :func:`mtpert.data.normalize_labels` puts them
        so), control cells exist (and, unless ``require_perturbed`` is False,
        perturbed cells), a numeric dose column, unique gene names, and an expression matrix that
        is finite and non-negative (read chunk by chunk when it is on disk, see
        :mod:`mtpert.data.backed`).
        """
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise DataError(f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
        if not adata.obs_names.is_unique:  # splits and predictions select cells by name
            dupes = adata.obs_names[adata.obs_names.duplicated()].unique()[:5].tolist()
            raise DataError(
                f"Cell names (obs_names) are not unique (e.g. {dupes}); cells are selected by name, "
                "so call adata.obs_names_make_unique() first."
            )
        missing = [k for k in self.obs_keys if k not in adata.obs.columns]
        if missing:
            raise DataError(
                f"obs key(s) {missing} not found; available obs columns: {list(adata.obs.columns)}. "
                "Pass the right names in DatasetSpec (CLI: --cell-type-key/--condition-key/--dose-key)."
            )
        for key in (self.cell_type_key, self.condition_key):
            n_missing = int(adata.obs[key].isna().sum())
            if n_missing:
                raise DataError(f"obs['{key}'] has {n_missing} missing values; drop or label those cells.")
        check_labels(adata, self)
        control = self.is_control(adata)
        if not control.any():
            seen = sorted(adata.obs[self.condition_key].astype(str).unique())[:10]
            raise DataError(
                f"No control cells: no cell has obs['{self.condition_key}'] == '{self.control}'. "
                f"Values present: {seen}. Set DatasetSpec(control=...) (CLI: --control)."
            )
        if require_perturbed and control.all():
            raise DataError(f"Every cell is control ('{self.control}'); there is no perturbation to model.")
        if self.dose_key is not None:
            dose = adata.obs[self.dose_key]
            if not pd.api.types.is_numeric_dtype(dose):
                raise DataError(
                    f"obs['{self.dose_key}'] must be numeric (got dtype {dose.dtype}); convert it, "
                    "e.g. adata.obs[key] = adata.obs[key].astype(float)."
                )
            if not np.isfinite(dose.to_numpy(dtype=float)).all():
                raise DataError(f"obs['{self.dose_key}'] has NaN or infinite doses.")
        if not adata.var_names.is_unique:
            dupes = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
            raise DataError(
                f"Gene names are not unique (e.g. {dupes}); call adata.var_names_make_unique() first."
            )
        disk = on_disk(adata)
        for block in disk.chunks() if disk is not None else (adata.X,):
            check_matrix(block)


def check_matrix(X: np.ndarray | sp.spmatrix, *, what: str = "adata.X", allow_negative: bool = False) -> None:
    """Raise :class:`DataError` if ``X`` holds NaN or infinite (or, unless allowed, negative) values."""
    values = X.data if sp.issparse(X) else np.asarray(X)
    if values.size == 0:
        return
    if not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        raise DataError(
            f"{what} holds {n_bad} NaN or infinite values; mtpert needs finite expression. "
            "Remove, impute or fix those entries (or drop those cells) first."
        )
    if not allow_negative and values.min() < 0:
        raise DataError(
            f"{what} holds negative values (min {values.min():.3g}); mtpert expects raw counts or "
            "log-normalized expression, not scaled/centred data. Use the unscaled matrix."
        )


def check_min_cells(min_cells: int) -> None:
    """Raise :class:`DataError` if ``min_cells`` is below :data:`MIN_CELLS_FLOOR`: with 0, a group
    without control cells (nothing to predict from) would count as one to hold out; with 1, a
    single cell would, which has no spread to score."""
    if min_cells < MIN_CELLS_FLOOR:
        raise DataError(
            f"min_cells must be at least {MIN_CELLS_FLOOR}, got {min_cells}: a held-out group needs "
            "control cells to predict from and perturbed cells to score, at least "
            f"{MIN_CELLS_FLOOR} of each (CLI: --min-cells)."
        )


def fewer_cells_advice(min_cells: int) -> str:
    """What to do about a target with fewer than ``min_cells`` cells: pick another, or lower
    ``min_cells`` where it is above :data:`MIN_CELLS_FLOOR`. At the floor (where ``mtpert fit``
    holds a group out, with no --min-cells option) lowering is impossible, so it is not advised."""
    if min_cells <= MIN_CELLS_FLOOR:
        return "Pick another target."
    return (
        "Pick another target, or lower min_cells (CLI: --min-cells) if you accept noisier scores."
    )


def require_groups(
    adata: AnnData,
    spec: DatasetSpec,
    cell_type: str,
    conditions: Iterable[str],
    *,
    min_cells: int = MIN_CELLS_FLOOR,
) -> None:
    """Raise :class:`DataError` if ``cell_type`` lacks ``min_cells`` control or perturbed cells.

    Used before holding a group out: a target with no (or too few) cells cannot be scored.
    """
    check_min_cells(min_cells)
    table = spec.counts_table(adata)
    if cell_type not in table.index:
        raise DataError(
            f"Cell type '{cell_type}' not found in obs['{spec.cell_type_key}']; "
            f"available: {list(table.index)}."
        )
    for condition in [spec.control, *conditions]:
        n = int(table.loc[cell_type].get(condition, 0))
        if n < min_cells:
            raise DataError(
                f"Cell type '{cell_type}' has {n} cells under '{condition}', fewer than the {min_cells} "
                f"needed to hold it out and score it. {fewer_cells_advice(min_cells)}"
            )
