"""The multi-task family on screens: conditions that combine perturbations (``A+B``).

A condition is encoded from its set of perturbations, so a pair never seen together is predicted
from its parts. The screens here are built by hand with known effects: A raises one block of genes,
B another, and a cell under A+B carries both changes.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from mtpert._array import dense
from mtpert.benchmark.holdout import seed_everything
from mtpert.data import DatasetSpec, prepare
from mtpert.errors import DataError
from mtpert.models import MODELS, MultiTaskModel, PerturbationModel, get_model

SPEC = DatasetSpec(condition_key="perturbation", combination_separator="+")
DOSE_SPEC = DatasetSpec(condition_key="perturbation", combination_separator="+", dose_key="dose")
TINY = {"hidden": (16,), "latent_dim": 4, "dose_dim": 4, "max_epochs": 3, "progress": False, "num_threads": 1}
BLOCK = 6
"""Genes each single perturbation raises: A genes 0-5, B 6-11, C 12-17, D 18-23."""
SINGLES = ("A", "B", "C", "D")


def screen(
    conditions: tuple[str, ...],
    *,
    n_genes: int = 40,
    n_cells: int = 80,
    lines: int = 1,
    doses: tuple[float, ...] = (),
    seed: int = 0,
) -> ad.AnnData:
    """Raw counts of a screen: each single perturbation raises its block of genes by 1.5 (natural
    log, times the dose where there are doses), and a combination adds its parts' changes."""
    rng = np.random.default_rng(seed)
    effect = {p: np.zeros(n_genes) for p in SINGLES}
    for i, p in enumerate(SINGLES):
        effect[p][i * BLOCK : (i + 1) * BLOCK] = 1.5
    counts, obs = [], []
    for line in range(lines):
        base = rng.normal(1.0, 0.5, n_genes)
        for condition in ("control", *conditions):
            for dose in [0.0] if condition == "control" else (doses or [1.0]):
                change = dose * sum(effect[p] for p in SPEC.parts(condition) if p != "control")
                counts.append(rng.poisson(np.exp(base + change), size=(n_cells, n_genes)))
                obs += [{"cell_type": f"line_{line}", "perturbation": condition, "dose": dose}] * n_cells
    return ad.AnnData(
        sp.csr_matrix(np.vstack(counts).astype(np.float32)),
        obs=pd.DataFrame(obs, index=[f"cell_{i}" for i in range(len(obs))]),
        var=pd.DataFrame(index=[f"gene_{i}" for i in range(n_genes)]),
    )


def mean_change(data: ad.AnnData, condition: str, pred: ad.AnnData | None = None) -> np.ndarray:
    """Mean change from control of ``condition``'s cells (or of a prediction) in ``data``."""
    labels = data.obs["perturbation"]
    control = dense(data[labels == "control"].X).mean(0)
    cells = data[labels == condition] if pred is None else pred
    return dense(cells.X).mean(0) - control


def test_a_pair_never_seen_together_is_predicted_from_its_parts() -> None:
    data = prepare(screen(("A", "B", "C", "D", "C+D", "A+B")), SPEC, n_hvg=0)
    labels = data.obs["perturbation"]
    seed_everything(0)
    model = get_model("mtae")(
        SPEC, hidden=(64,), latent_dim=8, max_epochs=60, seed=0, progress=False, num_threads=1
    ).fit(data[labels != "A+B"])
    control = data[labels == "control"]
    predicted = {c: mean_change(data, c, model.predict(control, c)) for c in ("A+B", "A")}
    expected = mean_change(data, "A") + mean_change(data, "B")
    assert np.corrcoef(mean_change(data, "A+B"), expected)[0, 1] > 0.9  # the data are additive
    a_genes, b_genes = slice(0, BLOCK), slice(BLOCK, 2 * BLOCK)
    pair = predicted["A+B"]
    assert np.corrcoef(pair, expected)[0, 1] > 0.8
    assert pair[a_genes].mean() > 0.3 * expected[a_genes].mean()
    assert pair[b_genes].mean() > 0.3 * expected[b_genes].mean()
    assert pair[b_genes].mean() - predicted["A"][b_genes].mean() > 0.3  # B's part is added to A's


MULTITASK_PRESETS = [name for name, preset in MODELS.items() if preset.cls is MultiTaskModel]


@pytest.mark.parametrize("name", MULTITASK_PRESETS)
def test_every_multitask_preset_predicts_a_combination_with_doses(name: str, tmp_path) -> None:
    data = prepare(
        screen(("A", "B", "C", "D", "C+D"), n_genes=30, n_cells=15, lines=2, doses=(0.5, 1.0)),
        DOSE_SPEC,
        n_hvg=0,
    )
    control = data[(data.obs["perturbation"] == "control") & (data.obs["cell_type"] == "line_0")]
    seed_everything(0)
    model = get_model(name)(DOSE_SPEC, **TINY, seed=0).fit(data)
    assert model.predicts_unseen_combinations
    unseen = {d: model.predict(control, "A+B", d).X for d in (0.5, 1.0)}
    assert all(np.isfinite(x).all() and x.shape == control.shape for x in unseen.values())
    assert not np.array_equal(unseen[0.5], unseen[1.0])
    np.testing.assert_array_equal(model.predict(control, "B+A", 1.0).X, unseen[1.0])
    assert np.isfinite(model.predict(control, "D+C", 0.5).X).all()  # a trained pair, reordered

    model.save(tmp_path)
    loaded = PerturbationModel.load(tmp_path, device="cpu")
    np.testing.assert_array_equal(loaded.predict(control, "A+B", 1.0).X, unseen[1.0])


def test_multihead_predicts_trained_combinations_only() -> None:
    data = prepare(screen(("A", "B", "C+D"), n_genes=30, n_cells=20), SPEC, n_hvg=0)
    control = data[data.obs["perturbation"] == "control"]
    model = MultiTaskModel(SPEC, conditioning="multihead", **TINY).fit(data)
    assert not model.predicts_unseen_combinations
    np.testing.assert_array_equal(model.predict(control, "D+C").X, model.predict(control, "C+D").X)
    with pytest.raises(DataError, match="one output layer per training condition.*'film'"):
        model.predict(control, "A+B")


def test_a_combination_with_an_unseen_part_is_refused() -> None:
    data = prepare(screen(("A", "B"), n_genes=30, n_cells=20), SPEC, n_hvg=0)
    model = MultiTaskModel(SPEC, **TINY).fit(data)
    control = data[data.obs["perturbation"] == "control"]
    with pytest.raises(DataError, match=r"perturbations \['C'\] of 'A\+C'.*known perturbations: \['A', 'B'\]"):
        model.predict(control, "A+C")
    with pytest.raises(DataError, match=r"condition 'C'.*known conditions: \['A', 'B'\]"):
        model.predict(control, "C")
