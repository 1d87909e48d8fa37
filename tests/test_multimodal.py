"""Paired modalities: reading them, CLR, the simulator's proteins, cross-modal models and the own-gene check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from mtpert.data import add_proteins, simulate
from mtpert.data.modalities import clr, coding_genes, paired, preprocess, read_modality
from mtpert.errors import CheckpointError, ConfigError, DataError, UnknownNameError
from mtpert.models import CROSSMODAL_MODELS, CrossModalRegistry, get_crossmodal
from mtpert.models.attribution import attribute_crossmodal, own_feature_ranks
from mtpert.models.base import NotFittedError
from mtpert.models.crossmodal import (
    BUILTIN_CROSSMODAL,
    FUSIONS,
    MultimodalAE,
    NeighbourMean,
    OwnGene,
    RidgeMap,
    feature_pearson,
)


@pytest.fixture(scope="module")
def sim():
    return add_proteins(simulate(n_cell_types=4, n_genes=150, n_cells=60, seed=1), n_proteins=10, seed=1)


@pytest.fixture(scope="module")
def split(sim):
    rna, prot = paired(sim, "protein_counts")
    order = np.random.default_rng(0).permutation(rna.n_obs)
    return rna, prot, order[:120], order[120:]


def test_modalities_are_read_from_obsm_with_their_names_and_refused_when_absent(sim) -> None:
    prot = read_modality(sim, "protein_counts")
    assert prot.shape == (sim.n_obs, 10) and list(prot.var_names) == list(sim.uns["protein_names"])
    assert prot.obs_names.equals(sim.obs_names) and read_modality(sim, "rna") is sim
    frame = sim.copy()
    frame.obsm["adt"] = pd.DataFrame(prot.X.toarray(), index=sim.obs_names, columns=[f"p{i}" for i in range(10)])
    assert list(read_modality(frame, "adt").var_names)[:2] == ["p0", "p1"]
    with pytest.raises(DataError, match="obsm has no 'hto'"):
        read_modality(sim, "hto")
    with pytest.raises(DataError, match="3 names"):
        read_modality(sim, "protein_counts", names=["a", "b", "c"])


def test_clr_centres_each_cell_and_refuses_transformed_data() -> None:
    counts = np.array([[0, 10, 100], [5, 5, 5]])
    values = clr(sp.csr_matrix(counts))
    np.testing.assert_allclose(values.mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(values[1], 0, atol=1e-6)  # equal counts: no contrast
    assert values[0, 2] > values[0, 1] > values[0, 0]
    with pytest.raises(DataError, match="non-negative"):
        clr(np.array([[1.0, -1.0]]))
    with pytest.raises(DataError, match="needs raw counts"):
        preprocess(AnnData(values), "clr")


def test_coding_genes_read_common_adt_names() -> None:
    found = coding_genes(["CD16", "PD-1 (CD279)", "MHCII (HLA-DR)", "IgG1", "CD4", "mystery"], genes=["FCGR3A", "PDCD1", "HLA-DRA", "cd4"])
    assert found == {"CD16": "FCGR3A", "PD-1 (CD279)": "PDCD1", "MHCII (HLA-DR)": "HLA-DRA", "IgG1": None, "CD4": "cd4", "mystery": None}


def test_simulated_proteins_follow_their_genes_with_attenuated_changes() -> None:
    base = simulate(n_cell_types=2, n_genes=100, n_cells=200, effect_size=2.0, seed=3)
    full, lagged = (add_proteins(base, n_proteins=8, attenuation=a, coupling=0.0, seed=0) for a in (0.0, 0.8))
    assert full.uns["simulation"]["proteins"] == lagged.uns["simulation"]["proteins"]
    stimulated = (full.obs["condition"] == "stimulated").to_numpy()

    def change(adata):
        log = np.log(adata.obsm["protein_counts"].toarray() + 1)
        return np.abs(log[stimulated].mean(0) - log[~stimulated].mean(0))

    assert change(lagged).sum() < 0.6 * change(full).sum()  # proteins lag their genes' change
    with pytest.raises(DataError, match="simulated counts"):
        add_proteins(AnnData(np.ones((3, 3))))


def test_every_fusion_predicts_proteins_from_rna_about_as_well_as_ridge(split) -> None:
    rna, prot, test, train = split
    ridge = feature_pearson(prot[test], RidgeMap().fit(rna[train], prot[train]).predict(rna[test])).mean()
    assert ridge > 0.6
    for fusion in FUSIONS:
        model = MultimodalAE(fusion, num_threads=1).fit(rna[train], prot[train])
        r = feature_pearson(prot[test], model.predict(rna[test])).mean()
        assert r > ridge - 0.1, (fusion, r, ridge)
    knn = feature_pearson(prot[test], NeighbourMean().fit(rna[train], prot[train]).predict(rna[test])).mean()
    assert knn > 0.5


def test_attributions_find_each_simulated_proteins_own_gene(sim, split) -> None:
    rna, prot, test, train = split
    truth = sim.uns["simulation"]["proteins"]
    own = OwnGene(truth).fit(rna[train], prot[train])
    assert feature_pearson(prot[test], own.predict(rna[test])).mean() > 0.6
    model = MultimodalAE("poe", num_threads=1).fit(rna[train], prot[train])
    ranks = own_feature_ranks(attribute_crossmodal(model, rna[test][:50]), truth)
    assert len(ranks) == 10 and ranks["rank"].median() <= 3  # of 150 genes
    shuffled = own_feature_ranks(attribute_crossmodal(model, rna[test][:50]), dict(zip(truth, np.roll(list(truth.values()), 1), strict=True)))
    assert shuffled["rank"].median() > ranks["rank"].median()  # the wrong gene ranks lower


def test_cross_modal_models_refuse_bad_input(split) -> None:
    rna, prot, test, train = split
    with pytest.raises(DataError, match="same cells"):
        RidgeMap().fit(rna[train], prot[test])
    broken = prot[train].copy()
    broken.X = broken.X.copy()
    broken.X[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        RidgeMap().fit(rna[train], broken)
    with pytest.raises(ConfigError, match="fusion"):
        MultimodalAE("concat")
    model = MultimodalAE("late", num_threads=1).fit(rna[train], prot[train])
    with pytest.raises(DataError, match="source features"):
        model.predict(rna[test][:, :20])


def test_a_mudata_modality_is_taken_as_it_is(sim) -> None:
    class MuDataLike:  # what read_modality relies on: a MuData's ``mod`` mapping
        def __init__(self, mod):
            self.mod = mod

    prot = read_modality(sim, "protein_counts")
    assert read_modality(MuDataLike({"rna": sim, "prot": prot}), "prot") is prot
    with pytest.raises(DataError, match="no modality 'atac'"):
        read_modality(MuDataLike({"rna": sim}), "atac")


def test_a_real_mudata_is_read_like_an_anndata_with_obsm(sim) -> None:
    mudata = pytest.importorskip("mudata", reason="MuData input is an optional extra: pip install 'mtpert[multiomics]'")
    prot = read_modality(sim, "protein_counts")
    data = mudata.MuData({"rna": sim, "prot": prot})
    rna, proteins = paired(data, "prot")
    expected_rna, expected_prot = paired(sim, "protein_counts")
    assert proteins.shape == expected_prot.shape and rna.shape == expected_rna.shape
    np.testing.assert_allclose(proteins.X, expected_prot.X, rtol=1e-6)


def test_a_saved_multimodal_model_predicts_the_same_after_loading(split, tmp_path) -> None:
    rna, prot, test, train = split
    for fusion in ("poe", "late"):
        model = MultimodalAE(fusion, num_threads=1).fit(rna[train], prot[train])
        model.save(tmp_path / fusion)
        loaded = MultimodalAE.load(tmp_path / fusion, device="cpu")
        np.testing.assert_allclose(loaded.predict(rna[test]).X, model.predict(rna[test]).X, rtol=1e-5, atol=1e-6)
    (tmp_path / "poe" / "weights.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="Cannot read"):
        MultimodalAE.load(tmp_path / "poe")
    with pytest.raises(NotFittedError):
        MultimodalAE("poe").save(tmp_path / "unfitted")


def test_crossmodal_models_are_taken_by_name_and_registered_by_users() -> None:
    assert list(CROSSMODAL_MODELS) == ["own_gene", "ridge", "knn", "multimodal"]
    model = get_crossmodal("multimodal")(fusion="late", seed=1)
    assert isinstance(model, MultimodalAE) and model.name == "multimodal_late"
    with pytest.raises(UnknownNameError, match="registered: own_gene, ridge, knn, multimodal"):
        get_crossmodal("pca")

    class SmallRidge(RidgeMap):
        """Ridge on fewer components."""

    users = CrossModalRegistry(BUILTIN_CROSSMODAL, "mtpert.test.none")
    assert users.register("small_ridge", SmallRidge) is SmallRidge
    assert users.register("small_ridge", SmallRidge) is SmallRidge  # the same class again: accepted
    with pytest.raises(ConfigError, match="'small_ridge' is already registered"):
        users.register("small_ridge", RidgeMap)
    with pytest.raises(ConfigError, match="Cross-modal model name 'a,b' cannot be used"):
        users.register("a,b", SmallRidge)
    with pytest.raises(TypeError, match="not a subclass of mtpert.models.CrossModalModel"):
        users.register("dict", dict)  # type: ignore[arg-type]
    assert "small_ridge" not in CROSSMODAL_MODELS  # a registry of one's own leaves mtpert's as it is
