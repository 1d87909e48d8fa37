"""Dataset spec validation, counts/log detection, leakage-free preprocessing and OOD splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from mtpert.data.pp import detect_kind, log_normalize, prepare, select_hvgs
from mtpert.data.spec import DatasetSpec
from mtpert.data.split import eligible_groups, heldout_mask, holdout_condition, holdout_group
from mtpert.errors import DataError

SPEC = DatasetSpec()


def small_counts(n_per_group: int = 30, n_genes: int = 50, seed: int = 0) -> AnnData:
    """Poisson counts for 3 cell types x (control, stim); enough structure to test bookkeeping."""
    rng = np.random.default_rng(seed)
    groups = [(t, c) for t in ("A", "B", "C") for c in ("control", "stim")]
    obs = pd.DataFrame(
        [{"cell_type": t, "condition": c} for t, c in groups for _ in range(n_per_group)],
        index=[f"cell{i}" for i in range(len(groups) * n_per_group)],
    )
    gene_means = rng.lognormal(1.0, 1.0, size=n_genes)
    X = rng.poisson(gene_means, size=(len(obs), n_genes)).astype(np.int32)
    return AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


# ---------------------------------------------------------------------- spec validation
def test_validate_accepts_good_data() -> None:
    SPEC.validate(small_counts())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.obs.drop(columns="cell_type", inplace=True), r"obs key\(s\) \['cell_type'\] not found"),
        (lambda a: a.obs.__setitem__("condition", "stim"), "No control cells"),
        (lambda a: a.obs.__setitem__("condition", "control"), "Every cell is control"),
        (lambda a: setattr(a, "var_names", ["g0"] * a.n_vars), "not unique"),
        (lambda a: setattr(a, "X", a.X.astype(np.float32).toarray() * np.nan), "NaN or infinite"),
        (lambda a: setattr(a, "X", -a.X.astype(np.float32).toarray() - 1), "negative values"),
    ],
    ids=["missing-key", "no-control", "no-perturbed", "duplicate-genes", "nan", "negative"],
)
def test_validate_names_the_problem(mutate, message: str) -> None:
    adata = small_counts()
    mutate(adata)
    with pytest.raises(DataError, match=message):
        SPEC.validate(adata)


def test_validate_dose_must_be_numeric() -> None:
    adata = small_counts()
    adata.obs["dose"] = "high"
    with pytest.raises(DataError, match="must be numeric"):
        DatasetSpec(dose_key="dose").validate(adata)


def test_spec_round_trips_and_rejects_unknown_fields() -> None:
    spec = DatasetSpec(cell_type_key="ct", dose_key="dose", control_dose=0.5)
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(DataError, match="Unknown DatasetSpec fields"):
        DatasetSpec.from_dict({"celltype": "x"})


# ---------------------------------------------------------------------- counts vs log
def test_detect_kind_and_refuse_double_log() -> None:
    adata = small_counts()
    assert detect_kind(adata) == "counts"
    log_normalize(adata)
    assert detect_kind(adata) == "log"
    assert "counts" in adata.layers
    np.testing.assert_allclose(np.expm1(adata.X.toarray()).sum(1), 1e4, rtol=1e-4)
    with pytest.raises(DataError, match="already log-normalized"):
        log_normalize(adata)


def test_detect_kind_unknown_for_normalized_unlogged() -> None:
    adata = small_counts()
    adata.X = adata.X.astype(np.float32) * 100.5
    assert detect_kind(adata) == "unknown"
    with pytest.raises(DataError, match="neither raw counts nor log1p"):
        prepare(adata, SPEC, n_hvg=10)


def test_prepare_keeps_log_data_and_selects_hvgs() -> None:
    adata = small_counts()
    log_normalize(adata)
    prepared = prepare(adata, SPEC, n_hvg=10)
    assert prepared.n_vars == 10
    # log data is not normalized again: values of kept genes are unchanged
    np.testing.assert_allclose(prepared.X.toarray(), adata[:, prepared.var_names].X.toarray())


def test_hvgs_ignore_excluded_cells() -> None:
    """A gene that varies only in the excluded (held-out) cells must not be chosen because of them."""
    adata = small_counts(n_genes=200)
    X = adata.X.toarray()
    heldout = heldout_mask(adata, SPEC, "A")
    X[heldout, 0] = np.where(np.arange(heldout.sum()) % 2, 30, 0)  # highly variable, only in A|stim
    adata.X = sp.csr_matrix(X)
    log_normalize(adata)
    assert "g0" in select_hvgs(adata, 5)
    assert "g0" not in select_hvgs(adata, 5, exclude=heldout)


# ---------------------------------------------------------------------- splits
def test_holdout_group_never_trains_on_target_perturbed_cells() -> None:
    adata = small_counts()
    split = holdout_group(adata, SPEC, "B", seed=3)
    (target,) = split.targets
    assert target.condition == "stim" and len(target.truth) == 30 and len(target.control) == 30
    seen = split.train.union(split.val)
    assert not seen.intersection(target.truth).size
    assert set(target.control) <= set(seen), "the target's control cells stay visible"
    assert len(seen) == adata.n_obs - 30
    assert not split.train.intersection(split.val).size
    # stratified 80/20 in every cell type x condition
    val_obs = adata.obs.loc[split.val]
    assert (val_obs.groupby(["cell_type", "condition"], observed=True).size() == 6).all()


def test_split_is_seeded() -> None:
    adata = small_counts()
    a, b, c = (holdout_group(adata, SPEC, "B", seed=s) for s in (1, 1, 2))
    assert a.val.equals(b.val)
    assert not a.val.equals(c.val)


def test_holdout_group_errors_on_empty_or_small_groups() -> None:
    adata = small_counts()
    with pytest.raises(DataError, match="No cells with obs\\['cell_type'\\] == 'Z'"):
        holdout_group(adata, SPEC, "Z")
    with pytest.raises(DataError, match="fewer than the 40 needed"):
        holdout_group(adata, SPEC, "A", min_cells=40)


def test_holdout_by_another_key() -> None:
    adata = small_counts()
    adata.obs["species"] = np.where(adata.obs["cell_type"] == "C", "mouse", "human")
    split = holdout_group(adata, SPEC, "mouse", group_key="species", min_cells=10)
    assert set(adata.obs.loc[split.targets[0].truth, "cell_type"]) == {"C"}
    assert split.description == "hold out species=mouse"


def test_holdout_condition_with_doses() -> None:
    adata = small_counts()
    adata.obs["dose"] = np.where(adata.obs["condition"] == "control", 0.0, np.tile([1.0, 10.0], adata.n_obs // 2))
    spec = DatasetSpec(dose_key="dose")
    split = holdout_condition(adata, spec, "stim", dose=10.0, min_cells=10)
    assert [t.group for t in split.targets] == ["A", "B", "C"]
    held = split.heldout
    assert (adata.obs.loc[held, "dose"] == 10.0).all()
    assert not split.train.union(split.val).intersection(held).size
    assert (adata.obs.loc[split.train, "dose"] != 10.0).all()
    with pytest.raises(DataError, match="say which dose"):
        holdout_condition(adata, spec, "stim")


def test_eligible_groups_flags_small_groups() -> None:
    adata = small_counts()
    adata = adata[~((adata.obs["cell_type"] == "C") & (adata.obs["condition"] == "stim"))].copy()
    table = eligible_groups(adata, SPEC, min_cells=20)
    assert table.loc["A", "eligible"] and not table.loc["C", "eligible"]
    assert table.loc["C", "reason"] == "0 perturbed cells < 20"


# ---------------------------------------------------------------------- real data
def test_kang_prepare_and_split(kang_adata: AnnData) -> None:
    assert detect_kind(kang_adata) == "counts"
    exclude = heldout_mask(kang_adata, SPEC, "CD14 Mono")
    prepared = prepare(kang_adata, SPEC, n_hvg=2000, exclude=exclude)
    assert prepared.shape == (2000, 2000) and detect_kind(prepared) == "log"
    leaky = prepare(kang_adata, SPEC, n_hvg=2000)
    assert set(leaky.var_names) != set(prepared.var_names), "HVGs with and without the target differ"
    table = eligible_groups(prepared, SPEC)
    assert not table.loc[["pDC", "Eryth", "Mk", "B Activated"], "eligible"].any()
    assert table["eligible"].sum() == 9
    with pytest.raises(DataError, match="'Eryth' has 0 cells under 'control'"):
        holdout_group(prepared, SPEC, "Eryth")
