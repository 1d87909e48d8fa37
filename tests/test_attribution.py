"""Attributions of a predicted change to the control cells' genes (integrated gradients)."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from mtpert._array import dense
from mtpert.data import DatasetSpec, prepare, seed_everything, simulate_screen
from mtpert.errors import ConfigError, DataError, MissingDependencyError
from mtpert.models import get_model
from mtpert.models.attribution import attribute

FAST = {"hidden": (32,), "latent_dim": 8, "max_epochs": 15, "num_threads": 1, "progress": False, "seed": 0}


@pytest.fixture(scope="module")
def screen():
    sim = simulate_screen(n_lines=2, n_genes=40, n_regulators=6, n_targets=5, n_pairs=2, n_cells=40, seed=1)
    spec = DatasetSpec(**sim.uns["simulation"]["spec"])
    data = prepare(sim, spec, n_hvg=0)
    control = data[(data.obs[spec.condition_key] == spec.control).to_numpy() & (data.obs[spec.cell_type_key] == "line_0").to_numpy()]
    return spec, data, control


@pytest.mark.parametrize(("name", "options"), [("mtae", FAST), ("gpo_vae", {"hidden": (32,), "max_epochs": 15, "num_threads": 1, "progress": False, "seed": 0})])
def test_attributions_add_up_to_the_predicted_change(screen, name, options) -> None:
    """Completeness: per target gene, the attributions summed over input genes equal the mean
    predicted change minus the change predicted for the baseline (zero expression)."""
    spec, data, control = screen
    seed_everything(0)
    model = get_model(name)(spec, **options).fit(data)
    table = attribute(model, control, "reg_0", targets=5, n_steps=64)
    assert table.shape == (data.n_vars, 5) and list(table.index) == list(data.var_names)
    predict = model.prediction_function("reg_0")
    x = torch.as_tensor(dense(control.X), dtype=torch.float32)
    with torch.no_grad():
        change = (predict(x) - x).mean(0).numpy()
        at_zero = (predict(torch.zeros_like(x)) - torch.zeros_like(x)).mean(0).numpy()
    columns = [list(data.var_names).index(g) for g in table.columns]
    expected = change[columns] - at_zero[columns]
    np.testing.assert_allclose(table.sum(axis=0).to_numpy(), expected, atol=0.02 * np.abs(expected).max() + 1e-4)
    assert np.all(np.diff(np.abs(change[columns])) <= 1e-6)  # targets by decreasing predicted change
    assert table.attrs["convergence"] < 0.05 * np.abs(expected).max() + 1e-3
    mean_baseline = attribute(model, control, "reg_0", targets=["reg_0"], baseline="mean")
    assert mean_baseline.shape == (data.n_vars, 1) and np.isfinite(mean_baseline.to_numpy()).all()


def test_attribute_refuses_what_it_cannot_explain(screen, monkeypatch) -> None:
    spec, data, control = screen
    with pytest.raises(ConfigError, match="nothing to attribute"):
        attribute(get_model("mean_shift")(spec).fit(data), control, "reg_0")
    model = get_model("mtae")(spec, **{**FAST, "max_epochs": 2}).fit(data)
    with pytest.raises(DataError, match="not among the model's 40 genes"):
        attribute(model, control, "reg_0", targets=["no_such_gene"])
    with pytest.raises(DataError, match="genes differ"):
        attribute(model, control[:, ::-1], "reg_0")
    with pytest.raises(ConfigError, match="baseline"):
        attribute(model, control, "reg_0", baseline="median")  # type: ignore[arg-type]
    real_import = builtins.__import__

    def without_captum(name, *args, **kwargs):
        if name.startswith("captum"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_captum)
    with pytest.raises(MissingDependencyError, match=r"mtpert\[explain\]"):
        attribute(model, control, "reg_0")
