"""The control and mean-shift predictors on hand-computable data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from mtpert.data.spec import DatasetSpec
from mtpert.errors import DataError
from mtpert.models import ControlPredictor, MeanShift, NotFittedError, PerturbationModel

# TRAIN holds a deliberately under-sampled condition; its warning is asserted where it matters.
pytestmark = pytest.mark.filterwarnings("ignore:mean_shift")

SPEC = DatasetSpec(dose_key="dose")


def log_data(groups: list[tuple[str, str, float, int, list[float]]]) -> AnnData:
    """Cells with constant log-expression per group: (cell type, condition, dose, n cells, values)."""
    obs, rows = [], []
    for cell_type, condition, dose, n, values in groups:
        obs += [{"cell_type": cell_type, "condition": condition, "dose": dose}] * n
        rows += [values] * n
    return AnnData(
        X=np.asarray(rows, dtype=np.float32) + 0.5,  # +0.5: non-integer, so detected as log data
        obs=pd.DataFrame(obs, index=[f"c{i}" for i in range(len(obs))]),
        var=pd.DataFrame(index=["g0", "g1"]),
    )


TRAIN = log_data(
    [
        ("A", "control", 0.0, 10, [1.0, 2.0]),
        ("A", "drug", 1.0, 10, [2.0, 2.0]),  # shift +1, 0
        ("B", "control", 0.0, 50, [1.0, 2.0]),
        ("B", "drug", 1.0, 50, [4.0, 0.0]),  # shift +3, -2
        ("B", "drug", 5.0, 3, [9.0, 9.0]),  # too few cells to count
    ]
)


def test_mean_shift_averages_cell_types_with_equal_weight() -> None:
    with pytest.warns(UserWarning, match="5 cells of 'drug@5.0'; left out of the fit"):
        model = MeanShift(SPEC).fit(TRAIN)
    control = log_data([("C", "control", 0.0, 4, [0.0, 0.5])])
    pred = model.predict(control, "drug", dose=1.0)
    # shift = mean(+1, +3), mean(0, -2) = (+2, -1); g1 clipped at the log1p floor 0
    np.testing.assert_allclose(pred.X, np.tile([2.5, 0.0], (4, 1)), atol=1e-6)
    assert (pred.obs["condition"] == "drug").all() and (pred.obs["dose"] == 1.0).all()
    assert pred.obs["cell_type"].eq("C").all(), "cell obs carried over"


def test_mean_shift_refuses_unknown_or_too_rare_conditions() -> None:
    model = MeanShift(SPEC).fit(TRAIN)
    control = log_data([("C", "control", 0.0, 2, [0.0, 0.0])])
    with pytest.raises(DataError, match="cannot interpolate doses"):
        model.predict(control, "drug", dose=2.0)
    with pytest.raises(DataError, match=r"known: 'drug@1.0'\."):
        model.predict(control, "drug", dose=5.0)
    with pytest.raises(DataError, match="no condition has a training cell type with 5 control"):
        MeanShift(SPEC).fit(TRAIN[TRAIN.obs["dose"] != 1.0])
    with pytest.raises(DataError, match="pass dose="):
        model.predict(control, "drug")


def test_control_predictor_returns_the_input(tmp_path) -> None:
    model = ControlPredictor(SPEC).fit(TRAIN)
    control = log_data([("C", "control", 0.0, 3, [0.25, 4.0])])
    np.testing.assert_array_equal(model.predict(control, "drug", 1.0).X, control.X)


def test_predict_checks_genes_and_data_kind(tmp_path) -> None:
    model = MeanShift(SPEC)
    control = log_data([("C", "control", 0.0, 3, [0.25, 4.0])])
    with pytest.raises(NotFittedError):
        model.predict(control, "drug", 1.0)
    model.fit(TRAIN)
    reordered = control[:, ["g1", "g0"]]
    np.testing.assert_allclose(model.predict(reordered, "drug", 1.0).X, model.predict(control, "drug", 1.0).X)
    renamed = control.copy()
    renamed.var_names = ["g0", "other"]
    with pytest.raises(DataError, match=r"1 of the model's 2 genes are missing .*\['g1'\]"):
        model.predict(renamed, "drug", 1.0)
    counts = control.copy()
    counts.X = np.round(counts.X * 10)
    with pytest.raises(DataError, match="raw counts"):
        model.predict(counts, "drug", 1.0)


def test_save_load_round_trip(tmp_path) -> None:
    model = MeanShift(SPEC, min_cells=4).fit(TRAIN)
    path = model.save(tmp_path / "model")
    assert not [p for p in path.iterdir() if p.name.startswith(".")], "no temporary files left behind"
    loaded = PerturbationModel.load(path)
    assert isinstance(loaded, MeanShift) and loaded.hparams == {"min_cells": 4}
    control = log_data([("C", "control", 0.0, 3, [0.25, 4.0])])
    np.testing.assert_array_equal(loaded.predict(control, "drug", 1.0).X, model.predict(control, "drug", 1.0).X)
    with pytest.raises(Exception, match="not a ControlPredictor"):
        ControlPredictor.load(path)
