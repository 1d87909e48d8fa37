"""The simulator: deterministic counts whose stored ground truth matches what the data shows."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from mtpert.data import DatasetSpec, detect_kind, log_normalize, simulate
from mtpert.data.simulate import true_log_means, true_response
from mtpert.errors import DataError

SPEC = DatasetSpec(dose_key="dose")


@pytest.fixture(scope="module")
def adata():
    return simulate(seed=7)


@pytest.fixture(scope="module")
def log_adata(adata):
    out = adata.copy()
    log_normalize(out)
    return out


def _cells(adata, cell_type, condition):
    obs = adata.obs
    return adata[
        (obs["cell_type"] == cell_type).to_numpy() & (obs["condition"] == condition).to_numpy()
    ]


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = simulate(seed=1), simulate(seed=1), simulate(seed=2)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.uns["simulation"]["lfc"], b.uns["simulation"]["lfc"])
    assert (a.X != c.X).nnz > 0


def test_shapes_keys_and_counts(adata):
    assert adata.shape == (4 * 2 * 100, 300)
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.int32
    assert adata.X.data.min() >= 0
    assert detect_kind(adata) == "counts"
    SPEC.validate(adata)
    DatasetSpec().validate(adata)
    assert SPEC.conditions(adata) == ["stimulated"]
    assert set(adata.obs.loc[adata.obs["condition"] == "control", "dose"]) == {0.0}
    truth = adata.uns["simulation"]
    assert set(truth) == {"params", "spec", "groups", "genes", "mean_counts", "lfc", "responsive"}
    assert truth["lfc"].shape == truth["mean_counts"].shape == (8, 300)
    assert DatasetSpec.from_dict(truth["spec"]) == SPEC
    assert len(truth["responsive"]["stimulated"]) == 30


def test_keys_and_doses_follow_the_arguments():
    spec = DatasetSpec(cell_type_key="ct", condition_key="drug", control="vehicle", dose_key="conc")
    adata = simulate(
        n_cell_types=2,
        n_genes=40,
        n_cells=10,
        perturbations=("a", "b"),
        doses=(0.1, 1.0),
        spec=spec,
    )
    spec.validate(adata)
    assert adata.n_obs == 2 * (1 + 2 * 2) * 10
    assert spec.conditions(adata) == ["a", "b"]
    assert sorted(adata.obs.loc[adata.obs["drug"] == "a", "conc"].unique()) == [0.1, 1.0]


def test_empirical_fold_changes_match_the_truth(adata):
    responsive = adata.uns["simulation"]["responsive"]["stimulated"]
    for cell_type in ["type_0", "type_1", "type_2", "type_3"]:
        truth = true_response(adata, cell_type, "stimulated")
        assert (truth.drop(responsive) == 0).all()
        ctrl = np.asarray(_cells(adata, cell_type, "control").X.mean(axis=0)).ravel()
        stim = np.asarray(_cells(adata, cell_type, "stimulated").X.mean(axis=0)).ravel()
        empirical = np.log(stim + 0.1) - np.log(ctrl + 0.1)
        is_resp = adata.var_names.isin(responsive)
        assert stats.pearsonr(empirical[is_resp], truth.to_numpy()[is_resp])[0] > 0.9


def test_type_specificity_zero_gives_one_response_for_every_type():
    same = simulate(type_specificity=0.0, seed=3)
    first = true_response(same, "type_0", "stimulated")
    for cell_type in ["type_1", "type_2", "type_3"]:
        np.testing.assert_allclose(true_response(same, cell_type, "stimulated"), first)
    differ = simulate(type_specificity=1.0, seed=3)
    assert not np.allclose(
        true_response(differ, "type_0", "stimulated"), true_response(differ, "type_1", "stimulated")
    )


def test_response_grows_monotonically_with_dose():
    doses = (0.1, 0.3, 1.0, 3.0)
    adata = simulate(doses=doses, n_cells=5, seed=4)
    lfc = np.stack([true_response(adata, "type_2", "stimulated", d).to_numpy() for d in doses])
    assert np.all(np.diff(np.abs(lfc), axis=0) >= 0)
    assert np.all(np.sign(lfc) == np.sign(lfc[-1]))
    assert np.abs(lfc[-1]).max() > 4 * np.abs(lfc[0]).max()
    with pytest.raises(DataError, match="pass dose="):
        true_response(adata, "type_2", "stimulated")


def test_responsive_genes_are_the_top_degs(adata, log_adata):
    responsive = set(adata.uns["simulation"]["responsive"]["stimulated"])
    for cell_type in ["type_0", "type_1", "type_2", "type_3"]:
        lfc = true_response(adata, cell_type, "stimulated")
        strong = set(lfc.index[lfc.abs() > 0.3])  # type-specific parts can cancel the shared one
        ctrl = _cells(log_adata, cell_type, "control").X.toarray()
        stim = _cells(log_adata, cell_type, "stimulated").X.toarray()
        t = np.nan_to_num(stats.ttest_ind(stim, ctrl).statistic)
        top = set(log_adata.var_names[np.argsort(-np.abs(t))[: len(responsive)]])
        assert len(strong) >= len(responsive) / 2
        assert len(top & strong) >= 0.8 * len(strong)  # normalization shifts every gene a little


def test_true_log_means_match_the_data(adata, log_adata):
    for condition in ["control", "stimulated"]:
        truth = true_log_means(adata, "type_1", condition)
        observed = np.asarray(_cells(log_adata, "type_1", condition).X.mean(axis=0)).ravel()
        r2 = 1 - np.sum((observed - truth.to_numpy()) ** 2) / np.sum(
            (observed - observed.mean()) ** 2
        )
        assert r2 > 0.95
    np.testing.assert_array_equal(truth, true_log_means(adata, "type_1", "stimulated"))


def test_h5ad_round_trip(adata, tmp_path):
    import anndata as ad

    adata.write_h5ad(tmp_path / "sim.h5ad")
    back = ad.read_h5ad(tmp_path / "sim.h5ad")
    assert (back.X != adata.X).nnz == 0
    np.testing.assert_allclose(
        true_response(back, "type_3", "stimulated"), true_response(adata, "type_3", "stimulated")
    )
    np.testing.assert_allclose(
        true_log_means(back, "type_3", "control"), true_log_means(adata, "type_3", "control")
    )
    assert list(back.uns["simulation"]["responsive"]["stimulated"]) == list(
        adata.uns["simulation"]["responsive"]["stimulated"]
    )


def test_errors_name_the_problem(adata):
    with pytest.raises(DataError, match="type_specificity"):
        simulate(type_specificity=1.5)
    with pytest.raises(DataError, match="control label"):
        simulate(perturbations=("control",))
    with pytest.raises(DataError, match="Cell types"):
        true_response(adata, "type_9", "stimulated")
    bare = adata.copy()
    del bare.uns["simulation"]
    with pytest.raises(DataError, match="no ground truth"):
        true_response(bare, "type_0", "stimulated")
