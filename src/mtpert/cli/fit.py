"""``mtpert fit`` and ``mtpert predict``: train a registered model on an .h5ad and save it; load
it and predict a group's control cells under a condition, ready for ``mtpert evaluate``.

Both prepare data as a benchmark run does: raw counts are log-normalized over all genes, and
``fit`` chooses its genes without the held-out group's perturbed cells. ``predict`` therefore
log-normalizes the control cells over all their genes before keeping the model's genes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from shlex import quote
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from mtpert.cli.options import (
    CellTypeKey,
    ConditionKey,
    Control,
    DoseKey,
    GuideKey,
    Separator,
    console,
    err_console,
    make_spec,
    read_data,
    seed_option,
    user_errors,
)

if TYPE_CHECKING:
    from anndata import AnnData

    from mtpert.data.spec import DatasetSpec
    from mtpert.models.base import PerturbationModel

FIT_RECORD = "fit.json"
"""File beside the saved model recording how ``mtpert fit`` made it (data, held-out group...)."""


def _available_device(device: str | None) -> str | None:
    """``device`` if this machine has it, else a usage error saying why (checked before any work)."""
    if device is not None:
        from mtpert.train.loop import resolve_device

        try:
            resolve_device(device)
        except (ValueError, RuntimeError) as error:  # torch raises RuntimeError on an unknown device name
            raise typer.BadParameter(str(error)) from None
    return device


Device = Annotated[
    str | None,
    typer.Option(help="Where networks run: auto (CUDA if available), cpu, cuda or cuda:N.", show_default="auto", callback=_available_device),
]
GroupKey = Annotated[str | None, typer.Option(help="obs column of the groups, e.g. species.", show_default="the cell-type key")]
Force = Annotated[bool, typer.Option("--force", help="Replace what is already at --out.")]


def fit(
    data: Annotated[str, typer.Argument(help="An .h5ad file (raw counts or log-normalized), or a registered dataset name.")],
    model: Annotated[str, typer.Option(help="A registered model name (see `mtpert models`).")],
    out: Annotated[Path, typer.Option(help="Folder to save the fitted model in (must not exist, or be empty).", file_okay=False)],
    holdout: Annotated[
        str | None,
        typer.Option(help="A group whose perturbed cells are left out of training and of the choice of genes, to predict later."),
    ] = None,
    group_key: GroupKey = None,
    params: Annotated[Path | None, typer.Option(help="YAML or JSON file mapping model parameters to values.", dir_okay=False, exists=True)] = None,
    set_params: Annotated[
        list[str] | None, typer.Option("--set", help="A model parameter as KEY=VALUE, e.g. --set max_epochs=50; repeatable; overrides --params.")
    ] = None,
    n_hvg: Annotated[int, typer.Option(min=0, help="Highly variable genes to keep (0: all genes).")] = 2000,
    seed: Annotated[int, seed_option("Seed of the train/validation division and of the model.")] = 1,
    device: Device = None,
    force: Force = False,
    cell_type_key: CellTypeKey = None,
    condition_key: ConditionKey = None,
    control: Control = None,
    dose_key: DoseKey = None,
    separator: Separator = None,
    guide_key: GuideKey = None,
) -> None:
    """Train model MODEL on DATA and save it to --out, for `mtpert predict`.

    A fifth of the cells (stratified by cell type and condition) are set aside for validation.
    With --holdout, the group's perturbed cells take no part in training or in choosing genes,
    so that `mtpert predict --group GROUP` followed by `mtpert evaluate` scores an honest
    out-of-distribution prediction.
    """
    from mtpert.data import Holdout, make_fold, prepare, seed_everything
    from mtpert.data.spec import MIN_CELLS_FLOOR
    from mtpert.data.split import train_val
    from mtpert.errors import ConfigError
    from mtpert.io import atomic_path
    from mtpert.lock import output_lock
    from mtpert.models import get_model

    with user_errors(), output_lock(out):
        _check_model_dir(out, force=force)
        keys = (cell_type_key, condition_key, control, dose_key)
        spec = make_spec(*keys, separator=separator, guide_key=guide_key, data=data)
        preset = get_model(model)
        options = preset.check_params(_model_params(params, set_params), where="params")
        untrained = preset(spec, **options)  # refuses a value out of range before the data is read
        if preset.one_dose_at_a_time and spec.dose_key is not None:
            raise ConfigError(
                f"'{model}' models one perturbation at one dose, as it was published; fit it on the control cells and "
                "one dose (mtpert.data.single_dose), without --dose-key, or pick a model that takes doses (see `mtpert models`)."
            )
        console.print(f"reading {escape(data)}")
        raw = read_data(data, spec)
        if holdout is None:
            console.print(f"preparing: log-normalizing{_hvg_note(n_hvg)}")
            prepared = prepare(raw, spec, n_hvg=n_hvg)
            train_names, val_names = train_val(prepared, spec, seed=seed)
        else:
            console.print(f"preparing: log-normalizing{_hvg_note(n_hvg)}, without the perturbed cells of {escape(holdout)}")
            fold = make_fold(raw, spec, Holdout(holdout, group_key=group_key), seed=seed, n_hvg=n_hvg, min_cells=MIN_CELLS_FLOOR)
            prepared, train_names, val_names = fold.data, fold.split.train, fold.split.val
        train, val = prepared[train_names], prepared[val_names]
        console.print(f"fitting {escape(model)} on {train.n_obs:,} cells ({val.n_obs:,} for validation) x {train.n_vars:,} genes")
        seed_everything(seed)
        start = time.perf_counter()
        fitted = untrained.fit(train, val if val.n_obs else None, device=device)
        seconds = time.perf_counter() - start
        record = {
            "data": data, "model": model, "holdout": holdout, "group_key": group_key or spec.cell_type_key,
            "n_hvg": n_hvg, "seed": seed, "params": options, "n_train": train.n_obs, "n_val": val.n_obs,
        }  # fmt: skip
        with atomic_path(out / FIT_RECORD) as record_file:  # in place after the model, or neither
            record_file.write_text(json.dumps(record, indent=2))
            fitted.save(out)
    conditions = spec.conditions(train)
    console.print(f"saved {escape(model)} to [bold]{escape(str(out))}[/] (fit in {seconds:.0f} s); it predicts: {escape(', '.join(conditions))}")
    dose_option = " --dose DOSE" if spec.dose_key else ""
    console.print(
        escape(f"next: mtpert predict {quote(str(out))} {quote(data)} --group {quote(holdout or 'GROUP')} ")
        + escape(f"--condition {quote(conditions[0])}{dose_option} --out pred.h5ad"),
        soft_wrap=True,  # a command to copy: let the terminal wrap it, not rich
    )


def _hvg_note(n_hvg: int) -> str:
    return f", keeping at most {n_hvg} highly variable genes" if n_hvg else ""


def predict(
    model_dir: Annotated[Path, typer.Argument(help="A folder written by `mtpert fit` (or PerturbationModel.save).", file_okay=False, exists=True)],
    data: Annotated[str, typer.Argument(help="An .h5ad file (raw counts or log-normalized) with the group's control cells, or a registered dataset name.")],
    group: Annotated[str, typer.Option(help="The group whose control cells are perturbed.")],
    condition: Annotated[str, typer.Option(help="The perturbation to predict (one the model was trained on).")],
    out: Annotated[Path, typer.Option(help="The .h5ad file to write the predicted cells to.", dir_okay=False)],
    dose: Annotated[float | None, typer.Option(help="The dose to predict, for a model trained with a dose key.")] = None,
    group_key: GroupKey = None,
    device: Device = None,
    force: Force = False,
) -> None:
    """Predict GROUP's control cells in DATA under CONDITION with the model in MODEL_DIR.

    The control cells are prepared as the model's training data was: raw counts are
    log-normalized over all genes, then the model's genes are kept. The written .h5ad holds one
    predicted cell per control cell, with the model's obs keys; score it with
    `mtpert evaluate DATA PRED`.
    """
    from mtpert.errors import DataError
    from mtpert.lock import output_lock
    from mtpert.models import PerturbationModel

    with user_errors(), output_lock(out, file=True):
        _check_h5ad_target(out, force=force)
        fitted = PerturbationModel.load(model_dir, device=device)
        spec = fitted.spec
        if spec.dose_key is not None and dose is None:
            raise DataError(f"The model was trained with doses (obs['{spec.dose_key}']); say which to predict with --dose.")
        if spec.dose_key is None and dose is not None:
            raise DataError("The model was trained without doses; leave out --dose.")
        console.print(f"reading {escape(data)}")
        cells = model_input(read_data(data, spec), fitted, group, group_key=group_key)
        _warn_if_trained_on(model_dir, group, group_key or spec.cell_type_key)
        console.print(f"predicting {cells.n_obs:,} control cells of {escape(group)} under {escape(condition)}")
        predicted = fitted.predict(cells, condition, dose)
        _write_h5ad(predicted, out)
    console.print(f"wrote [bold]{escape(str(out))}[/]: {predicted.n_obs:,} predicted cells x {predicted.n_vars:,} genes")
    console.print(escape(f"score it: mtpert evaluate {quote(data)} {quote(str(out))}{_key_options(spec)}"), soft_wrap=True)


def model_input(adata: AnnData, model: PerturbationModel, group: str, *, group_key: str | None = None) -> AnnData:
    """The control cells of ``group`` (in obs ``group_key``, default the model's cell-type key),
    prepared as ``model``'s training data was: raw counts log-normalized over all genes, then
    restricted to the model's genes, in its order."""
    from mtpert.data import log_normalize
    from mtpert.data.pp import require_counts_or_log
    from mtpert.errors import DataError

    spec = model.spec
    key = group_key or spec.cell_type_key
    for column in (key, spec.condition_key):
        if column not in adata.obs.columns:
            raise DataError(f"The data has no obs column '{column}' (the model's keys: {spec.to_dict()}); its columns: {list(adata.obs.columns)}.")
    groups = adata.obs[key].astype(str)
    if group not in set(groups):
        raise DataError(f"No cells with obs['{key}'] == '{group}'; available: {sorted(groups.unique())}.")
    in_group = (groups == group).to_numpy()
    chosen = in_group & spec.is_control(adata)
    if not chosen.any():
        found = sorted(adata.obs.loc[in_group, spec.condition_key].astype(str).unique())
        raise DataError(
            f"'{group}' has no control cells (obs['{spec.condition_key}'] == '{spec.control}'; its cells are {found}); "
            "a prediction starts from a group's control cells."
        )
    cells = adata[chosen].copy()
    if require_counts_or_log(cells, what="mtpert predict") == "counts":
        log_normalize(cells)
    genes = model.genes or []
    present = set(cells.var_names)
    missing = [g for g in genes if g not in present]
    if missing:
        raise DataError(
            f"{len(missing)} of the model's {len(genes)} genes are not in the data (e.g. {missing[:5]}); predict from data "
            "measuring the genes the model was trained on (model.genes)."
        )
    return cells[:, genes].copy()


def _model_params(file: Path | None, assignments: list[str] | None) -> dict[str, Any]:
    """Model parameters from a YAML/JSON ``file``, then ``KEY=VALUE`` ``assignments`` over them;
    values are read as YAML, so ``50`` is a number, ``[64, 32]`` a list and ``true`` a bool."""
    import yaml

    from mtpert.errors import ConfigError

    values: dict[str, Any] = {}
    if file is not None:
        try:
            values = yaml.safe_load(file.read_text()) or {}  # YAML reads JSON too
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ConfigError(f"Cannot read {file} as YAML or JSON: {error}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{file} must map parameter names to values, not hold a {type(values).__name__}.")
    for assignment in assignments or []:
        name, sep, text = assignment.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"--set takes KEY=VALUE, e.g. --set max_epochs=50; got '{assignment}'.")
        try:
            values[name.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            values[name.strip()] = text
    return values


def _check_model_dir(out: Path, *, force: bool) -> None:
    """Refuse to save into a folder holding anything but its lock, unless ``force``."""
    from mtpert.errors import ConfigError
    from mtpert.lock import LOCK_NAME

    if not force and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise ConfigError(f"{out} already exists and is not empty; give a new folder, or --force to replace the model in it.")


def _check_h5ad_target(out: Path, *, force: bool) -> None:
    from mtpert.errors import ConfigError

    if out.suffix.lower() != ".h5ad":
        raise ConfigError(f"{out}: the prediction is written as AnnData; give a file name ending in .h5ad.")
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; give a new file name, or --force to replace it.")


def _write_h5ad(adata: AnnData, out: Path) -> None:
    """Write ``adata`` so that ``out`` is either whole or absent, never half-written."""
    from mtpert.io import atomic_path

    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)


def _warn_if_trained_on(model_dir: Path, group: str, group_key: str) -> None:
    """Say so when the fit record shows that ``group``'s perturbed cells were in the training data."""
    record_file = model_dir / FIT_RECORD
    if not record_file.is_file():
        return
    from mtpert.errors import CheckpointError

    try:
        record = json.loads(record_file.read_bytes())
    except ValueError:  # invalid JSON or text
        record = None
    if not isinstance(record, dict):
        raise CheckpointError(
            f"{record_file} is not the JSON object `mtpert fit` writes (cut short or edited); it "
            "only records how the model was fitted: delete it to predict without that record, or "
            "fit the model again."
        )
    if (record.get("holdout"), record.get("group_key")) != (group, group_key):
        held_out = "nothing held out" if record.get("holdout") is None else f"only {record['holdout']} held out"
        err_console.print(
            f"[yellow]note:[/] the model was fitted with {escape(group)}'s perturbed cells ({escape(held_out)}), "
            "so this prediction is not out of distribution.",
            highlight=False,
        )


def _key_options(spec: DatasetSpec) -> str:
    """The obs-key options `mtpert evaluate` needs for data described by ``spec``."""
    from mtpert.data.spec import DatasetSpec

    defaults = DatasetSpec()
    options = {"cell-type-key": "cell_type_key", "condition-key": "condition_key", "control": "control", "dose-key": "dose_key"}
    return "".join(
        f" --{flag} {quote(str(getattr(spec, field)))}" for flag, field in options.items() if getattr(spec, field) != getattr(defaults, field)
    )
