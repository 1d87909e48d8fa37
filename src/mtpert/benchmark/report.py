"""The benchmark report: headline table, comparison with mean shift, noise ceiling, figures.

On data with doses it adds a table per dose for each metric, the rank of each prediction among
the doses, and the dose-response figure of the showcase group.

:func:`write_report` reads a benchmark directory and writes ``report/report.html`` (self-contained:
figures embedded), ``report/summary.md``, and every figure as PNG and PDF under ``report/figures``;
a report on some of the models goes to its own folder. Names from the data are written as text in
both the HTML and the Markdown, never as markup. The tables are public functions too, for notebooks.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mtpert.benchmark.grid import NOISE_CEILING
from mtpert.benchmark.store import PROVENANCE, ResultStore
from mtpert.data.split import condition_label
from mtpert.errors import ConfigError
from mtpert.io import atomic_write, safe_name
from mtpert.metrics import top_degs
from mtpert.pl import (
    deg_dotplot,
    mean_expression_scatter,
    metric_by_model,
    metric_heatmap,
    pca_overlay,
)
from mtpert.pl.dose import dose_response

HEADLINE = (
    "deg_overlap_top100", "r2_all", "r2_top20", "r2_top100", "pearson_delta_all",
    "e_distance_rel", "wasserstein_rel", "euclidean_rel", "mean_pairwise_rel", "mmd_rel", "rank",
)  # fmt: skip
"""The thesis' headline metrics: DEGs, R² over all HVGs / top-20 / top-100 DEGs, Pearson delta,
the five distances relative to predicting no change (< 1 beats it), and, where a group has
several conditions or doses, the rank of each prediction among them (0 best, 0.5 ignores them).
Those absent from the results are left out."""

BASELINE = "mean_shift"
HEATMAP_METRICS = ("r2_top100", "e_distance_rel")
N_DEGS = 20
"""Top true DEGs labelled in the scatter and shown in the dot plot."""
N_DOSE_GENES = 6
"""Genes in the dose-response figure."""


# ---------------------------------------------------------------------------- tables
def headline(results: pd.DataFrame, metrics: Sequence[str] = HEADLINE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per model: the mean of each metric over held-out targets and seeds, and its spread across
    seeds (std of the per-seed means over targets; NaN with one seed)."""
    data = results[results["metric"].isin(metrics)]
    per_seed = data.groupby(["model", "seed", "metric"])["value"].mean()
    mean = data.groupby(["model", "metric"])["value"].mean().unstack("metric")
    spread = per_seed.groupby(["model", "metric"]).std().unstack("metric")
    columns = [m for m in metrics if m in mean.columns]
    return mean[columns], spread[columns]


def best_models(mean: pd.DataFrame, higher_is_better: pd.Series) -> pd.DataFrame:
    """True where a model has the best value of a column (the noise ceiling does not compete)."""
    models = mean.drop(index=NOISE_CEILING, errors="ignore")
    best = {m: models[m].max() if higher_is_better[m] else models[m].min() for m in mean.columns}
    marks = pd.DataFrame(False, index=mean.index, columns=mean.columns)
    for metric, value in best.items():
        marks.loc[models.index, metric] = np.isclose(models[metric], value)
    return marks


def against_baseline(results: pd.DataFrame, baseline: str = BASELINE, metrics: Sequence[str] = HEADLINE) -> pd.DataFrame:
    """Each model against ``baseline`` on each metric.

    Columns: ``model``, ``metric``, ``mean``, ``baseline_mean``, ``targets_better`` (held-out
    targets where the model's seed-averaged value is better), ``targets`` and ``beats``: better on
    average *and* on more than half the targets, so one lucky target does not make a win.
    """
    data = results[results["metric"].isin(metrics)]
    per_target = data.groupby(["model", "group", "condition", "dose", "metric"], dropna=False)["value"].mean().unstack("model")
    if baseline not in per_target.columns:
        raise KeyError(f"No '{baseline}' runs to compare with; add it to the models.")
    higher = data.groupby("metric")["higher_is_better"].first()
    rows = []
    for model in per_target.columns.drop([baseline, NOISE_CEILING], errors="ignore"):
        for metric in [m for m in metrics if m in higher.index]:
            both = per_target.xs(metric, level="metric")[[model, baseline]].dropna()
            sign = 1.0 if higher[metric] else -1.0
            better = int((sign * (both[model] - both[baseline]) > 0).sum())
            mean, base = both[model].mean(), both[baseline].mean()
            rows.append(
                {
                    "model": model, "metric": metric, "mean": mean, "baseline_mean": base,
                    "targets_better": better, "targets": len(both),
                    "beats": bool(sign * (mean - base) > 0 and better > len(both) / 2),
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def costs(results: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean fit and predict seconds per run, largest peak memory, parameters, epochs."""
    runs = results.drop_duplicates("run_id")
    wanted = {
        "fit_s": ("fit_seconds", "mean"), "predict_s": ("predict_seconds", "mean"), "run_s": ("run_seconds", "mean"),
        "peak_rss_mb": ("peak_rss_mb", "max"), "n_params": ("n_params", "mean"), "epochs": ("epochs", "mean"),
        "runs": ("run_id", "size"),
    }  # fmt: skip
    return runs.groupby("model").agg(**{k: v for k, v in wanted.items() if v[0] in runs.columns})


def provenance(results: pd.DataFrame) -> pd.DataFrame:
    """Runs and invocations per mtpert version and git commit that made them, so a directory
    resumed with other code says so; runs from before runs recorded it count as "not recorded"."""
    runs = results.drop_duplicates("run_id").reindex(columns=["run_id", "model", *PROVENANCE])
    code = runs["mtpert_version"].fillna("not recorded") + " (" + runs["git_commit"].fillna("").replace("", "no git commit") + ")"
    table = runs.assign(code=code).groupby("code").agg(
        runs=("run_id", "size"), models=("model", "nunique"), invocations=("invocation", "nunique"), last_finished=("finished", "max")
    )
    return table.rename_axis("mtpert (commit)")


def verdicts(comparison: pd.DataFrame, baseline: str = BASELINE) -> list[str]:
    """One plain sentence per model: the metrics on which it beats ``baseline``, and those it does not."""
    lines = []
    for model, rows in comparison.groupby("model", sort=False):
        won = rows[rows["beats"]]
        if won.empty:
            lines.append(f"{model} does not beat {baseline} on any metric.")
            continue
        wins = ", ".join(f"{r.metric} ({r.targets_better}/{r.targets} targets)" for r in won.itertuples())
        lost = rows.loc[~rows["beats"], "metric"].tolist()
        lines.append(f"{model} beats {baseline} on {wins}" + (f"; not on {', '.join(lost)}." if lost else "; on every metric."))
    return lines


# ---------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class Figure:
    name: str
    caption: str
    figure: plt.Figure


def write_report(
    directory: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    metrics: Sequence[str] = HEADLINE,
    models: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> dict[str, Path]:
    """Write ``report.html``, ``summary.md`` and the figures (in ``formats``) of benchmark
    ``directory`` to folder ``out``.

    ``models``: report only these (and the noise ceiling), e.g. the part of a grid that is
    complete while the rest still runs; default every model with results.
    ``out``: default ``directory/report``, or ``directory/report-<models>`` with ``models``. A
    report on some models never replaces the full one: ``out=directory/report`` is refused then.

    Returns the paths written, by name (``html``, ``markdown``, and ``<figure>.<format>``).
    """
    store = ResultStore(directory)
    full = store.root / "report"
    if out is None:
        out = full if models is None else store.root / f"report-{safe_name('+'.join(sorted(set(models))))}"
    folder = Path(out)
    if models is not None and folder.resolve() == full.resolve():
        raise ConfigError(
            f"{full} holds the report on every model; write the report on {list(models)} elsewhere (--out)."
        )
    results = store.results()
    if models is not None:
        unknown = sorted(set(models) - set(results["model"]))
        if unknown:
            raise ConfigError(
                f"no results for model(s) {unknown} in {store.root}; it has "
                f"{sorted(set(results['model']) - {NOISE_CEILING})}. Pick --models among those."
            )
        results = results[results["model"].isin([*models, NOISE_CEILING])]
    config = store.config()
    metrics = [m for m in metrics if m in set(results["metric"])]
    order = _model_order(results, config.models if config else ())
    mean, spread = headline(results, metrics)
    mean, spread = mean.reindex(order), spread.reindex(order)
    marks = best_models(mean, results.groupby("metric")["higher_is_better"].first())
    comparison = against_baseline(results, metrics=metrics) if BASELINE in order else pd.DataFrame()
    if len(comparison):  # sentences and table list the models in the report's order, not alphabetically
        comparison = comparison.sort_values("model", key=lambda m: m.map(order.index), kind="stable")
    lines = verdicts(comparison) if len(comparison) else [f"No '{BASELINE}' runs, so no comparison with it."]
    written: dict[str, Path] = {}
    figures = _figures(results, store, config, order, metrics)
    pngs = {}  # each figure rendered once per format; the PNG is also embedded in the HTML
    for f in figures:
        for fmt in dict.fromkeys(["png", *formats]):
            buffer = io.BytesIO()
            f.figure.savefig(buffer, format=fmt, dpi=120)
            pngs[f.name] = buffer.getvalue() if fmt == "png" else pngs[f.name]
            if fmt in formats:
                written[f"{f.name}.{fmt}"] = atomic_write(folder / "figures" / f"{f.name}.{fmt}", lambda fh, b=buffer: fh.write(b.getvalue()))
        plt.close(f.figure)
    sections = _sections(results, mean, spread, marks, comparison, lines, costs(results).reindex(order), store)
    title = f"mtpert benchmark: {config.data if config else store.root.name}"
    written["html"] = atomic_write(folder / "report.html", lambda fh: fh.write(_html(title, sections, figures, pngs).encode()))
    written["markdown"] = atomic_write(folder / "summary.md", lambda fh: fh.write(_markdown(title, sections, figures).encode()))
    return written


@dataclass(frozen=True)
class _Table:
    title: str
    note: str
    cells: pd.DataFrame  # strings
    bold: pd.DataFrame | None = None


def _sections(results, mean, spread, marks, comparison, lines, cost, store) -> list[_Table | list[str]]:
    """The report's content in order: tables (rendered to HTML and Markdown alike) and sentences."""
    seeds = sorted(results["seed"].unique())
    targets = results[["group", "condition", "dose"]].drop_duplicates()
    cells = mean.map(_fmt) + np.where(spread.notna(), " ± " + spread.map(_fmt), "")
    out: list[_Table | list[str]] = [
        _Table(
            "Mean over held-out targets and seeds",
            f"{len(targets)} held-out targets x {len(seeds)} seeds ({', '.join(map(str, seeds))}); ± the std "
            "of the per-seed means. Bold: best model per column. *_rel: distance to the truth relative to "
            "the control's (< 1 beats predicting no change). The noise_ceiling row scores half of the true "
            "cells as a prediction of the other half: how well real cells predict real cells. Halves hold half "
            "the cells, so on noise-sensitive metrics (DEG overlap, distances) a model scored against all true "
            "cells can pass it: read it as a reference, not a bound."
            + (" rank: how many of the group's other true doses (conditions) are closer to the prediction than its "
               "own, as a fraction (0 best; 0.5 is what a dose-blind prediction scores)." if "rank" in mean.columns else ""),
            cells,
            marks,
        ),
        lines,
    ]
    if len(comparison):
        table = comparison.assign(
            cell=comparison["targets_better"].astype(str) + "/" + comparison["targets"].astype(str)
            + np.where(comparison["beats"], " ✓", "")
        ).pivot(index="model", columns="metric", values="cell")
        out.append(
            _Table(
                f"Held-out targets on which each model beats {BASELINE}",
                "✓: better on average and on more than half of the targets (each averaged over seeds).",
                table.reindex([m for m in mean.index if m in table.index])[[m for m in mean.columns if m in table.columns]],
            )
        )
    out.append(_Table("Cost per run", "Seconds per run; peak resident memory of the worker process during a run (MiB).", _cost_cells(cost)))
    if results["dose"].notna().any():
        for metric in mean.columns:
            per_dose = results[results["metric"] == metric].pivot_table(index="model", columns="dose", values="value", aggfunc="mean")
            out.append(_Table(f"{metric} per dose (mean over held-out groups and seeds)", "", per_dose.reindex(mean.index).map(_fmt)))
    for metric in mean.columns:
        per_target = results[results["metric"] == metric].pivot_table(index="model", columns="group", values="value", aggfunc="mean")
        out.append(_Table(f"{metric} per held-out target (mean over seeds)", "", per_target.reindex(mean.index).map(_fmt)))
    skipped = store.root / "skipped.csv"
    if skipped.is_file():
        table = pd.read_csv(skipped, index_col=0)
        if len(table):
            out.append(_Table("Groups not held out (too few cells)", "", table.astype(str)))
    out.append(_Table("Provenance", "The code that made the runs (each run file records it, with the data's sha256).", provenance(results).fillna("").astype(str)))
    return out


def _figures(results, store, config, order, metrics) -> list[Figure]:
    figures = []
    n = len(metrics)
    fig, axes = plt.subplots(2, (n + 1) // 2, figsize=(3.0 * ((n + 1) // 2), 7.5), layout="constrained")
    for ax, metric in zip(axes.ravel(), metrics, strict=False):
        metric_by_model(results, metric, ax=ax, order=order)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    figures.append(Figure("metrics_by_model", "Each metric per model: one dot per held-out target and seed.", fig))
    present = [m for m in HEATMAP_METRICS if m in set(results["metric"])]
    n_groups = results["group"].nunique()
    fig, axes = plt.subplots(1, len(present), figsize=(len(present) * (2.5 + 0.7 * n_groups), 1.5 + 0.4 * len(order)), layout="constrained", squeeze=False)
    for ax, metric in zip(axes[0], present, strict=True):
        metric_heatmap(results, metric, ax=ax, order=order)
    figures.append(Figure("heatmap", "Models x held-out targets, mean over seeds.", fig))
    showcase = config.showcase if config and config.showcase else None
    runs = results[(results["group"] == showcase) & results["model"].isin(order)] if showcase else results.iloc[:0]
    for condition, rows in runs.groupby("condition", sort=False):
        kept = {}  # (control, truth, predictions) per dose, lowest first
        for dose in sorted(rows["dose"].dropna().unique()) or [None]:
            try:
                kept[dose] = store.predictions(showcase, condition, dose)
            except FileNotFoundError:
                continue
        if not kept:
            continue
        dose, (control, truth, preds) = list(kept.items())[-1]
        seed = min(s for _, s in preds)
        chosen = {m: preds[m, seed] for m in order if (m, seed) in preds}
        label = f"{showcase} -> {condition_label(condition, dose)}, seed {seed}"
        degs = top_degs(control, truth, n=N_DEGS)
        fig, axes = _panel_grid(len(chosen))
        for ax, (model, pred) in zip(axes, chosen.items(), strict=False):
            pca_overlay(control, truth, pred, ax=ax, title=model)
        figures.append(Figure("pca", f"PCA of control, true and predicted cells ({label}); axes fitted on the real cells.", fig))
        fig, axes = _panel_grid(len(chosen))
        for ax, (model, pred) in zip(axes, chosen.items(), strict=False):
            mean_expression_scatter(truth, pred, highlight=degs, ax=ax, title=model)
        figures.append(Figure("scatter", f"Mean expression per gene, prediction vs truth ({label}); red: top {N_DEGS} true DEGs.", fig))
        fig, ax = plt.subplots(figsize=(2.5 + 0.32 * len(degs), 1.2 + 0.35 * (len(chosen) + 2)), layout="constrained")
        deg_dotplot(control, truth, chosen, degs, ax=ax)
        figures.append(Figure("dotplot", f"Top {N_DEGS} true DEGs across control, truth and each prediction ({label}).", fig))
        if dose is not None:
            figures.append(_dose_response(kept, config, showcase, condition, seed, order))
    return figures


def _dose_response(kept: dict, config, group: str, condition: str, seed: int, order: Sequence[str]) -> Figure:
    """True and predicted mean expression across the kept doses of one group, per model (``seed``)."""
    spec = config.dataset_spec()
    spec = replace(spec, cell_type_key=config.group_key or spec.cell_type_key)  # one group of the split's key
    control = next(iter(kept.values()))[0]
    truth = ad.concat([control, *(t for _, t, _ in kept.values())], index_unique="-")
    preds = {
        m: ad.concat([p[m, seed] for _, _, p in kept.values() if (m, seed) in p], index_unique="-")
        for m in order
        if any((m, seed) in p for _, _, p in kept.values())
    }
    fig = dose_response(truth, preds, spec, condition=condition, n_genes=N_DOSE_GENES)
    caption = (
        f"Dose-response of {group} -> {condition}: mean expression of the top {N_DOSE_GENES} true DEGs of the highest dose, "
        f"true (black) and predicted by each model (seed {seed}), at each dose predicted."
    )
    return Figure("dose_response", caption, fig)


def _panel_grid(n: int) -> tuple[plt.Figure, list]:
    """A figure of ``n`` square panels, at most five a row; unused axes hidden."""
    cols = min(5, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows), layout="constrained", squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, list(axes.ravel()[:n])


def _model_order(results: pd.DataFrame, configured: Sequence[str]) -> list[str]:
    """The configured order, then any other models found, then the noise ceiling last."""
    found = list(dict.fromkeys(results["model"]))
    order = [m for m in configured if m in found] + sorted(m for m in found if m not in configured and m != NOISE_CEILING)
    return order + ([NOISE_CEILING] if NOISE_CEILING in found else [])


def _cost_cells(cost: pd.DataFrame) -> pd.DataFrame:
    """The cost table as text: counts (parameters, runs) as whole numbers, the rest by :func:`_fmt`."""
    counts = [c for c in ("n_params", "runs") if c in cost]
    cells = cost.map(_fmt)
    cells[counts] = cost[counts].map(lambda v: f"{v:,.0f}" if np.isfinite(v) else "")
    return cells


def _fmt(value: float) -> str:
    """Three decimals for scores, fewer for large numbers (seconds, MiB, parameters); NaN blank."""
    if value is None or not np.isfinite(value):
        return ""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


# ---------------------------------------------------------------------------- rendering
_CSS = """body{font-family:system-ui,sans-serif;max-width:1600px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}
.wide{overflow-x:auto}
th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}p.note{color:#555;font-size:13px}
img{max-width:100%;border:1px solid #eee}figure{margin:1em 0 2em}figcaption{color:#555;font-size:13px}"""


def _html(title: str, sections, figures: list[Figure], pngs: dict[str, bytes]) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]  # fmt: skip
    for section in sections:
        if isinstance(section, list):
            parts.append("<h2>Against mean shift</h2><ul class='verdicts'>" + "".join(f"<li>{html.escape(s)}</li>" for s in section) + "</ul>")
            continue
        parts.append(f"<h2>{html.escape(section.title)}</h2>" + (f"<p class='note'>{html.escape(section.note)}</p>" if section.note else ""))
        parts.append(_html_table(section))
    parts.append("<h2>Figures</h2>")
    for f in figures:
        data = base64.b64encode(pngs[f.name]).decode()
        parts.append(f"<figure id='{f.name}'><img alt='{html.escape(f.name)}' src='data:image/png;base64,{data}'><figcaption>{html.escape(f.caption)}</figcaption></figure>")
    return "\n".join(parts) + "</body></html>\n"


def _html_table(t: _Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [t.cells.index.name or "", *t.cells.columns])
    rows = []
    for model, row in t.cells.iterrows():
        cells = []
        for column, value in row.items():
            text = html.escape(str(value))
            cells.append(f"<td><b>{text}</b></td>" if t.bold is not None and t.bold.loc[model, column] else f"<td>{text}</td>")
        rows.append(f"<tr><th>{html.escape(str(model))}</th>{''.join(cells)}</tr>")
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


_MARKDOWN = str.maketrans({**{c: "\\" + c for c in "\\`*~[]|$"}, "\n": " ", "\r": " "})


def _md(text: object) -> str:
    """Text as literal Markdown: HTML escaped as in the HTML report; Markdown's emphasis, code, link,
    table and math characters backslashed; line breaks (which would end a table row) made spaces."""
    return html.escape(str(text), quote=False).translate(_MARKDOWN)


def _markdown_table(t: _Table) -> str:
    """The table as Markdown, escaped by :func:`_md`, best values bold; cells otherwise verbatim
    (tabulate would reparse '1420400' as 1.4204e+06)."""
    cells = t.cells.map(_md)
    if t.bold is not None:
        cells = cells.where(~t.bold, "**" + cells + "**")
    cells.index = cells.index.map(_md).rename(_md(t.cells.index.name or ""))
    cells.columns = cells.columns.map(_md)
    return cells.to_markdown(disable_numparse=True, colalign=("left",) + ("right",) * cells.shape[1])


def _markdown(title: str, sections, figures: list[Figure]) -> str:
    parts = [f"# {_md(title)}\n"]
    for section in sections:
        if isinstance(section, list):
            parts.append("## Against mean shift\n\n" + "\n".join(f"- {_md(s)}" for s in section) + "\n")
            continue
        note = f"{_md(section.note)}\n\n" if section.note else ""
        parts.append(f"## {_md(section.title)}\n\n{note}{_markdown_table(section)}\n")
    parts.append("## Figures\n\n" + "\n".join(f"- `figures/{f.name}.png` (and .pdf): {_md(f.caption)}" for f in figures) + "\n")
    return "\n".join(parts)
