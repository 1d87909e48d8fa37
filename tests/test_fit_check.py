"""Every registered model reproduces what it was trained on (issue 28's fit check).

Each model is fitted on every cell of a simulation at realistic depth (3,000 UMIs per cell),
then asked for each training condition from the training control cells of each group; the
predicted mean change (log-normalized, prediction minus control) is compared with the true one
(:func:`mtpert.data.simulate.true_log_means`, condition minus control). A model whose median
Pearson r over conditions x groups is below :data:`MIN_PEARSON` has a defect: a model that
cannot reproduce a condition it saw cannot predict one it did not. The models are read from the
registry at collection, so a new one is checked without editing this file.

The data are sized so that the measured training change itself correlates with the truth at
:data:`CEILING` or better (checked in :func:`test_the_data_allow_the_bar`): a model below the bar
fails for itself, not for the noise of the data. Hyperparameters are each model's defaults but
for :data:`FEWER_EPOCHS`, which keeps the whole check under a minute on one thread.
"""

from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData

from mtpert._array import dense
from mtpert.data import DatasetSpec, prepare, seed_everything, simulate
from mtpert.data.simulate import true_log_means
from mtpert.models import MODELS, get_model

SPEC = DatasetSpec(dose_key="dose")
DOSE = 1.0
MIN_PEARSON = 0.8
"""The bar of the issue: median Pearson r of predicted vs true mean change."""
CEILING = 0.88
"""What the measured training changes reach against the truth on these data (0.90)."""

NO_CONDITION_SPECIFIC_CHANGE = {
    "control": "predicts no change by design (the 'no perturbation' baseline)",
    "global_mean": "predicts the same change for every condition by design (the bar of no "
    "perturbation-specific information)",
}
"""Models that cannot reproduce a condition's own change by their documented purpose."""

FEWER_EPOCHS = {"LatentShiftModel": 50, "ScButterfly": 100}
"""``max_epochs`` by model class, for time (defaults 100 and 200). scGen and scVIDR score the same
at 50 epochs as at 100 (0.82 and 0.83 against 0.80 and 0.84), in half the time."""

KNOWN_DEFECTS: dict[str, str] = {
    "scbutterfly": "median r 0.67 at 100 epochs, 0.74 at its default 200, 0.78 at 800: the "
    "original's input masking (input_dropout 0.5) on these dense data (every gene expressed, "
    "mean square 38x the variance across cells) buries the cells' differences in masking noise; "
    "without it 0.79 at 100 epochs and 0.88 at 200. A property of the published method on dense "
    "data, not a defect of the port: re-estimating BatchNorm statistics unmasked (0.78 at 200), "
    "no gradient clipping, no early stopping or the original's translation KL weight change "
    "little (issue 28)",
}
"""Models below the bar at their defaults, with what was found (strict xfail: alerts when fixed)."""


def _cases() -> list[object]:
    cases: list[object] = []
    for name, preset in MODELS.items():
        if preset.class_name == "ExternalModel":  # a peer runs in its own environment (test_external.py)
            continue
        if name in NO_CONDITION_SPECIFIC_CHANGE:
            reason = NO_CONDITION_SPECIFIC_CHANGE[name]
            cases.append(pytest.param(name, marks=pytest.mark.skip(reason=reason)))
        elif name in KNOWN_DEFECTS:
            mark = pytest.mark.xfail(strict=True, reason=KNOWN_DEFECTS[name])
            cases.append(pytest.param(name, marks=mark))
        else:
            cases.append(name)
    return cases


@pytest.fixture(scope="module")
def simulated() -> tuple[AnnData, dict[tuple[str, str], np.ndarray]]:
    """Log-normalized cells (2 types x control and 3 perturbations x 40 cells, 100 genes, about
    3,000 UMIs per cell), and the true mean change of each (type, condition)."""
    sim = simulate(
        n_cell_types=2, n_genes=100, n_cells=40, perturbations=("p0", "p1", "p2"),
        doses=(DOSE,), library_size=3000.0, spec=SPEC, seed=0,
    )  # fmt: skip
    data = prepare(sim, SPEC, n_hvg=0)
    truth = {}
    for group in data.obs[SPEC.cell_type_key].cat.categories:
        control = true_log_means(sim, group, SPEC.control).to_numpy()
        for condition in SPEC.conditions(data):
            truth[group, condition] = (
                true_log_means(sim, group, condition, DOSE).to_numpy() - control
            )
    return data, truth


def _cells(data: AnnData, group: str, condition: str) -> AnnData:
    obs = data.obs
    return data[(obs[SPEC.cell_type_key] == group) & (obs[SPEC.condition_key] == condition)]


def test_the_data_allow_the_bar(simulated) -> None:
    """The measured training changes are close enough to the truth that 0.8 is reachable."""
    data, truth = simulated
    r = []
    for (group, condition), change in truth.items():
        control = dense(_cells(data, group, SPEC.control).X).mean(0)
        measured = dense(_cells(data, group, condition).X).mean(0) - control
        r.append(np.corrcoef(measured, change)[0, 1])
    assert np.median(r) >= CEILING
    assert np.median(np.asarray(data.layers["counts"].sum(1)).ravel()) >= 2000


@pytest.mark.filterwarnings("ignore:.*alignment='data' has no target")  # gpo_vae: no gene perturbed
@pytest.mark.parametrize("name", _cases())
def test_model_reproduces_its_training_conditions(name: str, simulated) -> None:
    """Fitted on every cell, the model predicts each training condition's change in each group."""
    data, truth = simulated
    preset = get_model(name)
    options = {"progress": False, "num_threads": 1, "seed": 0}
    if preset.class_name in FEWER_EPOCHS:
        options["max_epochs"] = FEWER_EPOCHS[preset.class_name]
    seed_everything(0)
    model = preset(SPEC, **{k: v for k, v in options.items() if k in preset.cls.parameters()})
    model.fit(data)
    r = {}
    for group, condition in truth:
        control = _cells(data, group, SPEC.control)
        change = dense(model.predict(control, condition, DOSE).X).mean(0) - dense(control.X).mean(0)
        r[group, condition] = (
            np.corrcoef(change, truth[group, condition])[0, 1] if np.ptp(change) else 0.0
        )
    scores = ", ".join(f"{g}/{c} {v:.2f}" for (g, c), v in r.items())
    assert np.median(list(r.values())) >= MIN_PEARSON, (
        f"{name}: median r below {MIN_PEARSON}: {scores}"
    )
