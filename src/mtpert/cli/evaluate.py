"""``mtpert evaluate``: score a predictions file against the truth."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mtpert.cli.options import (
    CellTypeKey,
    ConditionKey,
    Control,
    DoseKey,
    console,
    make_spec,
    print_frame,
    user_errors,
)


class SpaceOption(str, Enum):
    """Choices of ``--space`` (:func:`mtpert.metrics.evaluate_prediction`'s ``space``)."""

    target = "target"
    group = "group"


def evaluate(
    truth: Annotated[Path, typer.Argument(help="h5ad with the control and true perturbed cells.", exists=True, dir_okay=False)],
    pred: Annotated[Path, typer.Argument(help="h5ad with predicted cells (log-normalized), obs naming cell type and condition.", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option(help="Where to write the tidy table (.csv or .parquet).")] = Path("scores.csv"),
    cell_type_key: CellTypeKey = None,
    condition_key: ConditionKey = None,
    control: Control = None,
    dose_key: DoseKey = None,
    space: Annotated[SpaceOption, typer.Option(help="Where distances are measured: each target's own PCA, or one PCA per cell type shared by its targets (fast for screens of many perturbations).")] = SpaceOption.target,
) -> None:
    """Score every (cell type, condition) in PRED against TRUTH with the full evaluation suite.

    TRUTH may hold raw counts: they are log-normalized over all their genes, then restricted to
    the genes of PRED, which is how the prediction's training data was prepared.
    """
    from mtpert.data.pp import detect_kind, log_normalize
    from mtpert.data.registry import read_h5ad
    from mtpert.errors import DataError
    from mtpert.io import check_table_target, write_table
    from mtpert.metrics import evaluate_prediction

    with user_errors():
        spec = make_spec(cell_type_key, condition_key, control, dose_key)
        check_table_target(out)  # before the scoring, not after it
        truth_data, pred_data = read_h5ad(truth), read_h5ad(pred)
        for adata, path in ((truth_data, truth), (pred_data, pred)):
            for names, what, fix in ((adata.var_names, "gene", "var_names_make_unique"), (adata.obs_names, "cell", "obs_names_make_unique")):
                if not names.is_unique:
                    raise DataError(
                        f"{path} has duplicate {what} names (e.g. {names[names.duplicated()].unique()[:5].tolist()}); "
                        f"make them unique (adata.{fix}()) or remove the duplicates."
                    )
        if detect_kind(truth_data) == "counts":
            log_normalize(truth_data)
        missing = pred_data.var_names.difference(truth_data.var_names)
        if len(missing):
            raise DataError(f"{len(missing)} predicted genes of {pred} are not in {truth} (e.g. {missing[:5].tolist()}).")
        scores = evaluate_prediction(
            truth_data[:, pred_data.var_names], pred_data, spec, space=space.value, progress=True
        )
        write_table(scores, out)
        headline = ["r2_all", "r2_top100", "deg_overlap_top100", "e_distance_rel"]
        shown = scores[scores["metric"].isin(headline)]
        index = [c for c in ("cell_type", "condition", "dose") if c in shown.columns]  # evaluate_prediction's id columns
        print_frame(shown.pivot_table(index=index, columns="metric", values="value"))
    console.print(f"wrote {len(scores)} rows to [bold]{escape(str(out))}[/]")
