"""scGen and scVIDR (one VAE, two ways of estimating the latent shift) against known truth.

The registry's contract test (tests/test_models.py) covers fit/predict/save/load for every preset;
here: what each shift estimator computes, and the dose behaviour of scvidr_multi.
"""

from __future__ import annotations

import numpy as np
import pytest

from mtpert._array import dense
from mtpert.data import seed_everything, simulate
from mtpert.data.simulate import true_log_means
from mtpert.errors import DataError
from mtpert.models import LatentShiftModel
from tests.test_models import DOSE_SPEC, SPEC, build, fold, r2

NET = {"hidden": (128,), "latent_dim": 16, "lr": 3e-3, "batch_size": 64, "max_epochs": 60}
"""Small enough for a test (about 2 s per fit), trained long enough to learn the simulated response."""


@pytest.fixture(scope="module")
def strong():
    """A clear response (20% of genes, log-fold-changes around 2), so a small VAE learns it."""
    sim = simulate(
        n_cell_types=4, n_genes=200, n_cells=100, effect_size=2.0, responsive_fraction=0.2, seed=1
    )
    return (sim, *fold(sim, SPEC))


@pytest.fixture(scope="module")
def fitted(strong) -> dict[str, LatentShiftModel]:
    _, _, _, train, val = strong
    models = {}
    for name in ("scgen", "scvidr"):
        seed_everything(0)
        models[name] = build(name, SPEC, **NET, seed=0).fit(train, val)
    return models


def test_both_recover_the_held_out_response(strong, fitted) -> None:
    sim, data, split, _, _ = strong
    target = split.targets[0]
    control = data[target.control]
    truth = (
        true_log_means(sim, target.group, target.condition)
        - true_log_means(sim, target.group, "control")
    ).to_numpy()
    for name, model in fitted.items():
        pred = model.predict(control, target.condition)
        change = dense(pred.X).mean(0) - dense(control.X).mean(0)
        assert r2(change, truth) > 0.3, (
            name,
            r2(change, truth),
        )  # 0.44-0.46 over seeds 0-2; control: 0


def type_latents(model: LatentShiftModel, cells, cell_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean latent of ``cell_type``'s control and stimulated cells among ``cells``."""
    in_type = (cells.obs["cell_type"] == cell_type).to_numpy()
    control = (cells.obs["condition"] == "control").to_numpy()
    return (
        model.encode(cells[in_type & control]).mean(0),
        model.encode(cells[in_type & ~control]).mean(0),
    )


def test_scgen_shift_is_the_balanced_mean_difference(strong, fitted) -> None:
    _, data, _, train, val = strong
    model = fitted["scgen"]
    cells = data[train.obs_names.append(val.obs_names)]
    # every type has control cells (the held-out one included); only training types are perturbed
    held_out = (cells.obs["cell_type"] == "type_0").to_numpy()
    control, perturbed = zip(
        *(type_latents(model, cells, t) for t in ("type_1", "type_2", "type_3"))
    )
    control += (model.encode(cells[held_out]).mean(0),)  # all its cells in the fit are control
    expected = np.mean(perturbed, 0) - np.mean(control, 0)
    np.testing.assert_allclose(model.intercept[0], expected, atol=1e-5)
    assert not model.coef.any()  # the same shift for every target


def test_scvidr_shift_depends_on_the_cell_type(strong, fitted) -> None:
    _, data, _, train, val = strong
    model = fitted["scvidr"]
    cells = data[train.obs_names.append(val.obs_names)]
    shifts = {}
    for t in ("type_1", "type_2", "type_3"):
        ctrl, pert = type_latents(model, cells, t)
        shifts[t] = model.intercept[0] + model.coef[0] @ ctrl
        # three types in a 16-dimensional latent: least squares interpolates each type's own shift
        np.testing.assert_allclose(shifts[t], pert - ctrl, atol=1e-3)
    assert min(
        np.linalg.norm(shifts[a] - shifts[b])
        for a, b in (("type_1", "type_2"), ("type_2", "type_3"))
    ) > 0.1 * np.linalg.norm(shifts["type_1"])


def test_scvidr_multi_scales_the_shift_with_log_dose() -> None:
    doses = (0.25, 0.5, 1.0, 2.0)
    sim = simulate(n_cell_types=3, n_genes=100, n_cells=60, doses=doses, effect_size=1.5, seed=2)
    data, split, train, val = fold(sim, DOSE_SPEC)
    seed_everything(0)
    model = build("scvidr_multi", DOSE_SPEC, **NET, seed=0).fit(train, val)
    assert model.conditions == [("stimulated", 2.0)]  # one shift, from the highest dose
    control = data[split.targets[0].control]
    base = dense(control.X).mean(0)
    full = (
        true_log_means(sim, "type_0", "stimulated", 2.0) - true_log_means(sim, "type_0", "control")
    ).to_numpy()
    along = [
        float((dense(model.predict(control, "stimulated", d).X).mean(0) - base) @ full)
        for d in (0.0, 0.25, 0.75, 2.0)  # 0.75 was never seen
    ]
    assert along[0] < along[1] < along[2] < along[3], along


def test_dose_misuse_raises_data_error(strong) -> None:
    _, _, _, train, val = strong
    with pytest.raises(DataError, match="no dose_key"):
        build("scvidr_multi", SPEC).fit(train, val)
    dosed = simulate(n_cell_types=3, n_genes=40, n_cells=30, doses=(0.5, 1.0), seed=0)
    data, split, train, val = fold(dosed, DOSE_SPEC)
    model = build("scvidr", DOSE_SPEC).fit(train, val)
    assert [d for _, d in model.conditions] == [0.5, 1.0]  # one shift per dose
    with pytest.raises(DataError, match="dose_scaling='log' interpolates"):
        model.predict(data[split.targets[0].control], "stimulated", 0.75)


def test_bad_options_name_the_choices() -> None:
    with pytest.raises(ValueError, match="shift must be one of"):
        LatentShiftModel(SPEC, shift="median")
    with pytest.raises(ValueError, match="dose_scaling must be one of"):
        LatentShiftModel(SPEC, dose_scaling="linear")
    assert LatentShiftModel(SPEC, dose_scaling="log").name == "scgen_multi"
