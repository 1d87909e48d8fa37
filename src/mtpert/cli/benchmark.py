"""``mtpert benchmark`` and ``mtpert report``: the whole grid from one resumable command."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from mtpert.cli.options import (
    CellTypeKey,
    ConditionKey,
    Control,
    DoseKey,
    Separator,
    console,
    err_console,
    make_spec,
    user_errors,
)

if TYPE_CHECKING:
    from mtpert.benchmark.executors import Executor, RunFailure
    from mtpert.benchmark.harness import Plan
    from mtpert.benchmark.progress import Eta
    from mtpert.benchmark.store import RunResult

LIVE_ROWS = 8
"""Finished runs shown in the live table."""
LIVE_METRICS = {"r2_top100": "R² top100", "deg_overlap_top100": "DEGs top100", "e_distance_rel": "E-dist rel"}


class ExecutorKind(str, Enum):
    local = "local"
    ray = "ray"


class SplitKind(str, Enum):
    group = "group"
    condition = "condition"
    combination = "combination"


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str | None) -> list[int] | None:
    try:
        return None if text is None else [int(s) for s in _names(text)]  # type: ignore[union-attr]
    except ValueError:
        raise typer.BadParameter(f"seeds must be comma-separated integers, e.g. 1,2,19193; got '{text}'.") from None


def benchmark(
    out: Annotated[Path, typer.Option(help="Benchmark directory: results, provenance and report. Rerun to resume.")],
    data: Annotated[str | None, typer.Option(help="An .h5ad file or a registered dataset name.")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated registered model names (see `mtpert models`).")] = None,
    holdout: Annotated[str | None, typer.Option(help="Comma-separated groups (split group) or condition@dose labels (split condition) to hold out, or 'all'.", show_default="all")] = None,
    split: Annotated[SplitKind | None, typer.Option(help="group: hold out a group at every dose (--group-key replicate: held-out cells of seen perturbations); condition: a condition@dose in every group; combination: a share of a screen's combinations (A+B), per split seed.", show_default="group")] = None,
    split_seeds: Annotated[str | None, typer.Option(help="With --split combination: comma-separated seeds, each drawing which combinations are held out.", show_default="1,2,3")] = None,
    group_key: Annotated[str | None, typer.Option(help="obs column of the groups, e.g. species.", show_default="the cell-type key")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds.", show_default="1,2,19193")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML or JSON file with any setting of BenchmarkConfig; options given here override it.", dir_okay=False)] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Runs at a time (local executor); each gets cores // jobs torch threads.")] = 1,
    executor: Annotated[ExecutorKind, typer.Option(help="local, or ray (connects to $RAY_ADDRESS, else starts a local Ray).")] = ExecutorKind.local,
    n_hvg: Annotated[int | None, typer.Option(help="Highly variable genes, chosen without the held-out cells.", show_default="2000")] = None,
    min_cells: Annotated[int | None, typer.Option(help="Fewest control and perturbed cells a held-out group needs.", show_default="20")] = None,
    save_models: Annotated[bool | None, typer.Option("--save-models/--no-save-models", help="Keep every fitted model under DIR/models.")] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the report when the grid is done.")] = True,
    rescore: Annotated[bool, typer.Option("--rescore", help="Also redo the finished runs holding values of a metric whose definition changed since (the report leaves those values out).")] = False,
    cell_type_key: CellTypeKey = None,
    condition_key: ConditionKey = None,
    control: Control = None,
    dose_key: DoseKey = None,
    separator: Separator = None,
) -> None:
    """Fit and score every model on every held-out target under every seed; resumable.

    Finished runs are skipped, so after an interruption rerun the same command. Targets too small
    to score are skipped with the reason. Ends by writing DIR/report (see `mtpert report`).
    Data with doses: pass --dose-key (or spec: {dose_key: ...} in --config).
    """
    from mtpert.benchmark import BenchmarkConfig, run_benchmark, write_report
    from mtpert.benchmark.executors import make_executor

    keys = (cell_type_key, condition_key, control, dose_key)
    given_keys = any(k is not None for k in (*keys, separator))
    given = {
        "data": data,
        "models": _names(models),
        "holdout": None if holdout is None or holdout.strip() == "all" else _names(holdout),
        "seeds": _seeds(seeds),
        "split": None if split is None else split.value,
        "group_key": group_key,
        "n_hvg": n_hvg,
        "min_cells": min_cells,
        "save_models": save_models,
        "split_seeds": _seeds(split_seeds),
        "spec": make_spec(*keys, separator=separator, data=data).to_dict() if given_keys else None,
    }
    with user_errors():
        if config is not None:
            settings = BenchmarkConfig.from_file(config, **given)
        else:
            missing = [f"--{k}" for k in ("data", "models") if given[k] is None]
            if missing:
                raise typer.BadParameter(f"give {' and '.join(missing)}, or a --config file that sets them.")
            settings = BenchmarkConfig.from_dict({k: v for k, v in given.items() if v is not None})
        runner = make_executor(executor.value, jobs)
        live = _LiveView(runner)
        start = time.perf_counter()
        try:
            run_benchmark(settings, out, executor=runner, on_plan=live.start, on_result=live.add, on_failure=live.fail, rescore=rescore)
        except BaseException as error:
            live.stop()  # its refreshing thread ends, and the message goes below its last table
            if not isinstance(error, KeyboardInterrupt):
                raise
            err_console.print(f"[yellow]interrupted[/] after {live.finished} runs; rerun the same command to resume.")
            raise typer.Exit(code=130) from None
        live.stop()
        console.print(f"{live.finished} runs in {time.perf_counter() - start:.0f} s; results in [bold]{escape(str(out))}/runs[/]")
        if report:
            paths = write_report(out)
            console.print(f"report: [bold]{escape(str(paths['html']))}[/] and {escape(paths['markdown'].name)}")
        if live.failed:
            err_console.print(
                f"[red]{live.failed} runs failed[/]; tracebacks in {out}/failed/. Fix the cause and rerun the "
                "same command: finished runs are kept, failed ones are tried again."
            )
            raise typer.Exit(code=1)


def report(
    directory: Annotated[Path, typer.Argument(help="A benchmark directory written by `mtpert benchmark`.", exists=True, file_okay=False)],
    pdf: Annotated[bool, typer.Option("--pdf/--no-pdf", help="Also save every figure as PDF.")] = True,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models to report (default: all with results).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder to write the report to.", show_default="DIRECTORY/report; with --models DIRECTORY/report-<models>", file_okay=False),
    ] = None,
) -> None:
    """Write DIRECTORY/report: report.html (self-contained), summary.md, and figures as PNG and PDF.

    With --models the report goes to DIRECTORY/report-<models> (or --out), never over the full one.
    """
    from mtpert.benchmark import write_report

    with user_errors():
        paths = write_report(
            directory,
            out=out,
            models=_names(models),
            formats=("png", "pdf") if pdf else ("png",),
        )
    html, markdown = (escape(str(paths[k])) for k in ("html", "markdown"))
    console.print(f"wrote [bold]{html}[/], {markdown} and {len(paths) - 2} figure files")


class _LiveView:
    """An overall progress bar with the time left (from the durations of finished runs of each
    model), the running runs with the epoch each fit is at, and the last finished runs."""

    def __init__(self, executor: Executor) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("left {task.fields[eta]}"), console=console,
        )  # fmt: skip
        self.executor = executor
        self.labels: dict[str, str] = {}
        self.rows: list[tuple[str, ...]] = []
        self.finished = 0
        self.failed = 0
        self.live = None
        self.eta: Eta | None = None

    def start(self, plan: Plan) -> None:
        from rich.live import Live

        from mtpert.benchmark.progress import Eta

        grid = plan.grid  # skipped groups were already logged by run_benchmark
        console.print(
            f"{len(grid.runs)} runs ({escape(grid.runs[0].dataset)}): {len({r.heldout for r in grid.runs})} held-out targets x "
            f"{len({r.model for r in grid.runs})} models (noise ceiling included) x {len({r.seed for r in grid.runs})} seeds; "
            f"{plan.n_done} already done, {len(plan.todo)} to run"
        )
        self.labels = {t.run.id: t.run.label() for t in plan.todo}
        self.eta = Eta((t.run.model for t in plan.todo), self.executor.jobs, _earlier_durations(plan))
        self.task = self.progress.add_task("runs", total=len(grid.runs), completed=plan.n_done, eta=self.eta.text())
        self.live = Live(get_renderable=self._view, console=console, refresh_per_second=4, transient=False)
        self.live.start()

    def add(self, result: RunResult) -> None:
        table = result.table
        values = table.groupby("metric")["value"].mean()
        seconds = table["run_seconds"].iloc[0]
        run = result.run
        self.rows = [*self.rows, (run.heldout, run.model, str(run.seed), *(f"{values.get(m, float('nan')):.3f}" for m in LIVE_METRICS), f"{seconds:.1f}")][-LIVE_ROWS:]
        self.finished += 1
        self.eta.finished(run.model, float(seconds))  # type: ignore[union-attr]
        self.progress.update(self.task, advance=1, eta=self.eta.text())  # type: ignore[union-attr]
        if self.live is not None:
            self.live.refresh()

    def fail(self, failure: RunFailure) -> None:
        """A run raised: say so above the live view, and count it as handled."""
        self.failed += 1
        self.eta.failed(failure.run.model)  # type: ignore[union-attr]
        self.progress.update(self.task, advance=1, eta=self.eta.text())  # type: ignore[union-attr]
        self.progress.console.print(f"[red]failed[/] {escape(failure.run.label())}: {escape(failure.message)}")

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            console.line()

    def _view(self):
        from rich.console import Group
        from rich.table import Table

        running = Table("running", "now", title="running runs", title_justify="left")
        for run_id, status in sorted(self.executor.board.copy().items(), key=lambda item: self.labels.get(item[0], "")):
            running.add_row(escape(self.labels.get(run_id, run_id)), escape(status))
        table = Table("held out", "model", "seed", *LIVE_METRICS.values(), "s", title="last finished runs", title_justify="left")
        for row in self.rows:
            table.add_row(*map(escape, row))
        return Group(self.progress, running, table)


def _earlier_durations(plan: Plan) -> dict[str, list[float]]:
    """Seconds each finished run of the directory took, by model (none in a new directory)."""
    if not plan.n_done:
        return {}
    runs = plan.store.results().drop_duplicates("run_id")
    return {m: list(r["run_seconds"].astype(float)) for m, r in runs.groupby("model")}
