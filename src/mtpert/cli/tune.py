"""``mtpert tune``: choose a model's hyperparameters by an Optuna study on training cells only."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from mtpert.cli.fit import GroupKey, _model_params
from mtpert.cli.options import (
    CellTypeKey,
    ConditionKey,
    Control,
    DoseKey,
    Separator,
    console,
    make_spec,
    print_frame,
    read_data,
    seed_option,
    user_errors,
)

if TYPE_CHECKING:
    import pandas as pd

    from mtpert.tuning import TuningResult

STUDY = "study.journal"
BEST = "best_params.json"
TRIALS = "trials.csv"


def tune(
    data: Annotated[str, typer.Argument(help="An .h5ad file (raw counts or log-normalized), or a registered dataset name.")],
    model: Annotated[str, typer.Option(help="A registered model name (see `mtpert models`).")],
    out: Annotated[Path, typer.Option(help="Folder of the study: rerun the same command to resume it.", file_okay=False)],
    holdout: Annotated[
        str | None,
        typer.Option(help="A group whose perturbed cells take no part in tuning (the one you will predict); the inner folds hold out other groups."),
    ] = None,
    group_key: GroupKey = None,
    trials: Annotated[int, typer.Option(min=1, help="Trials in the study (a resumed study runs those it lacks).")] = 20,
    metric: Annotated[str, typer.Option(help="Evaluation metric a trial is scored on, mean over the inner held-out groups.")] = "r2_top100",
    inner_folds: Annotated[int, typer.Option(min=1, help="Training groups held out in turn per trial.")] = 3,
    space: Annotated[
        Path | None,
        typer.Option(help="YAML or JSON file overriding the model's search space, e.g. {lr: {low: 1e-4, high: 1e-2, log: true}}.", dir_okay=False, exists=True),
    ] = None,
    set_params: Annotated[
        list[str] | None, typer.Option("--set", help="A fixed model parameter as KEY=VALUE, e.g. --set max_epochs=50; repeatable.")
    ] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Processes running trials at once (one thread each).")] = 1,
    n_hvg: Annotated[int, typer.Option(min=0, help="Highly variable genes to keep (0: all genes).")] = 2000,
    seed: Annotated[int, seed_option("Seed of the inner splits, of every fit and of the sampler.")] = 1,
    cell_type_key: CellTypeKey = None,
    condition_key: ConditionKey = None,
    control: Control = None,
    dose_key: DoseKey = None,
    separator: Separator = None,
) -> None:
    """Tune MODEL's hyperparameters on DATA without looking at the held-out cells.

    Each trial fits the model once per inner fold, holding out a training group (never the
    --holdout group's perturbed cells), and scores its prediction with --metric. The study is kept
    in --out/study.journal; the best hyperparameters go to --out/best_params.json, ready for
    `mtpert fit --params`, and every trial to --out/trials.csv.
    """
    from mtpert.data import Holdout, make_fold, prepare
    from mtpert.data.spec import MIN_CELLS_FLOOR
    from mtpert.io import atomic_write, write_table
    from mtpert.lock import output_lock
    from mtpert.models import get_model
    from mtpert.tuning import tune as run_study

    with user_errors(), output_lock(out):
        spec = make_spec(cell_type_key, condition_key, control, dose_key, separator=separator, data=data)
        fixed = get_model(model).check_params(_model_params(None, set_params), where="--set")
        settings = {"trials": trials, "metric": metric, "inner_folds": inner_folds, "space": _model_params(space, None)}
        console.print(f"reading {escape(data)}")
        raw = read_data(data, spec)
        if holdout is None:
            prepared = prepare(raw, spec, n_hvg=n_hvg)
        else:
            fold = make_fold(  # held out only to be kept from tuning, not scored: any size will do
                raw, spec, Holdout(holdout, group_key=group_key), seed=seed, n_hvg=n_hvg, min_cells=MIN_CELLS_FLOOR
            )
            prepared = fold.data[fold.split.train.union(fold.split.val)]
            console.print(f"tuning without the {len(fold.split.heldout):,} held-out cells of {escape(holdout)}")
        with _trial_progress(trials) as on_trial:
            result = run_study(
                prepared, spec, model, settings=settings, params=fixed, group_key=group_key, seed=seed,
                storage=out / STUDY, jobs=jobs, on_trial=on_trial,
            )  # fmt: skip
        atomic_write(out / BEST, lambda f: f.write(json.dumps(result.best_params, indent=2, default=str).encode()))
        write_table(result.trials, out / TRIALS)
    console.print(
        f"{len(result.trials)} trials in {result.seconds:.0f} s; inner held-out groups: {escape(', '.join(result.inner_targets))}; "
        f"best mean {escape(result.metric)} {result.best_value:.4f}"
    )
    print_frame(_shown(result), title="best hyperparameters")
    console.print(escape(f"saved to {out / BEST}; next: mtpert fit {data} --model {model} --params {out / BEST} --out MODEL_DIR"), soft_wrap=True)


def _shown(result: TuningResult) -> pd.DataFrame:
    """The best hyperparameters, each said to be tuned or held fixed (by --set or the space)."""
    import pandas as pd

    params = result.best_params
    return pd.DataFrame(
        {"value": [str(v) for v in params.values()], "source": ["fixed" if k in result.fixed else "tuned" for k in params]},
        index=pd.Index(list(params), name="parameter"),
    )


@contextmanager
def _trial_progress(total: int) -> Iterator[Callable[[int, int], None]]:
    """A progress bar over the study's trials; yields the callback that advances it."""
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("trials", total=total)
        yield lambda done, total: progress.update(task, completed=done, total=total)
