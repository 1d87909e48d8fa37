"""Do the regulator -> target edges models learn from real screens agree with CollecTRI?

Run: taskset -c 1 nice -n 10 python benchmarks/grn_real/grn_real.py [--datasets papalexi,norman] [--seeds 1,2,19193]

On the Papalexi (THP-1 knock-outs) and Norman (K562 activations) screens, every model is fitted on
all cells (the question is the graph, not prediction) and its edges are compared with CollecTRI's
TF -> target edges for the perturbed genes that are CollecTRI regulators. Two readings:

* ``regulon``: for each perturbed TF ``a``, every measured gene ``b != a`` is a candidate target,
  scored by the size of the change in ``b`` that perturbing ``a`` alone causes: predicted by a
  model (mean over the control cells it is given), or measured (``fold_change``, the data itself);
  any model can be read this way;
* ``mask``: GPO-VAE's own graph between perturbed genes (mask probability of ``a -> b``), for the
  candidates ``b`` that are perturbed and measured; only ``gpo_vae`` / ``sams_vae`` have it, and
  ``fold_change`` is the reference.

Models: ``gpo_vae`` aligned to the data, ``sams_vae`` (no alignment), ``mtae`` (the multi-task
default; regulon only) and ``gpo_vae_prior``: aligned to CollecTRI itself, which would make the
agreement circular, so it is cross-validated: the perturbed TFs are split into two folds, each fold's
model is aligned to a CollecTRI table without that fold's regulators and scored on them only.

Recorded per dataset, reading, method and seed: AUROC, AUPRC (average precision; a random ranking
scores the share of true edges), the mean per-TF AUROC (TFs with a true and a false candidate),
and the fraction of true edges whose change has CollecTRI's sign (activation: up when the TF is
activated, down when it is knocked out; 0.5 by chance). Caveat: the panels hold only 299 (Papalexi)
and 500 (Norman) genes, so each TF has a few true targets in them, and CollecTRI is incomplete: a
non-edge is not evidence of no regulation. Writes benchmarks/grn_real/grn_real.{md,csv}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import REPO, provenance, record
from sklearn.metrics import average_precision_score, roc_auc_score

from mtpert.benchmark.holdout import seed_everything
from mtpert.data import DatasetSpec, prepare
from mtpert.data.priors import read_prior
from mtpert.errors import DataError
from mtpert.models import get_model
from mtpert.models.simple import mean_changes

DATA_DIR = Path(os.environ.get("MTPERT_DATA_DIR", REPO.parent / "shared" / "data"))
PRIOR = DATA_DIR / "priors" / "collectri_human.tsv.gz"


@dataclass(frozen=True)
class Screen:
    file: str
    spec: DatasetSpec
    direction: int  # +1 activation (CRISPRa), -1 loss of function (knock-out, CRISPRi)


SCREENS = {
    "papalexi": Screen(
        "papalexi2021_thp1_crispr.h5ad",
        DatasetSpec(cell_type_key="replicate", condition_key="perturbation", control="control"),
        -1,
    ),
    "norman": Screen(
        "norman2019_k562_crispra_subset.h5ad",
        DatasetSpec(condition_key="perturbation", control="control", combination_separator="+"),
        +1,
    ),
}


def single_changes(data: ad.AnnData, spec: DatasetSpec) -> pd.DataFrame:
    """(single perturbations x genes): the measured mean change from control, averaged over groups."""
    table = mean_changes(data, spec, min_cells=5, model="grn_real")
    averaged = np.nanmean(table.changes, axis=1)  # conditions x groups x genes -> conditions x genes
    rows = pd.DataFrame(averaged, index=[c for c, _ in table.keys], columns=data.var_names)
    singles = [c for c in rows.index if spec.combination_separator is None or spec.combination_separator not in c]
    return rows.loc[singles].groupby(level=0).mean()


def predicted_changes(model, data: ad.AnnData, spec: DatasetSpec, perturbations: list[str]) -> pd.DataFrame:
    """(perturbations x genes): a model's predicted mean change from the control cells it is given."""
    control = data[spec.is_control(data)].copy()
    basal = np.asarray(control.X.mean(0)).ravel()
    rows = {p: np.asarray(model.predict(control, p).X.mean(0)).ravel() - basal for p in perturbations}
    return pd.DataFrame(rows, index=data.var_names).T


def score(truth: pd.DataFrame, ranking: pd.DataFrame, sign: pd.DataFrame | None) -> dict[str, float]:
    """AUROC / AUPRC of ``ranking`` (TFs x candidates; NaN: not a candidate) against ``truth``,
    pooled and per TF, and the share of true edges whose signed change agrees with CollecTRI."""
    mask = ranking.notna().to_numpy()
    y, s = truth.to_numpy()[mask], ranking.to_numpy()[mask]
    per_tf = [
        roc_auc_score(t[m], r[m])
        for t, r, m in zip(truth.to_numpy(), ranking.to_numpy(), mask, strict=True)
        if 0 < t[m].sum() < m.sum()
    ]
    agree = np.nan
    if sign is not None:
        expected, observed = sign.to_numpy()[truth.to_numpy()], ranking.attrs["signed"].to_numpy()[truth.to_numpy()]
        agree = float(np.mean(np.sign(observed) == expected)) if len(expected) else np.nan
    return {
        "auroc": roc_auc_score(y, s) if 0 < y.sum() < len(y) else np.nan,
        "auprc": average_precision_score(y, s) if y.sum() > 0 else np.nan,
        "per_tf_auroc": float(np.mean(per_tf)) if per_tf else np.nan,
        "tfs_scored": len(per_tf), "true_edges": int(y.sum()), "candidates": int(mask.sum()),
        "chance_auprc": float(y.mean()), "sign_agreement": agree,
    }  # fmt: skip


def signed_ranking(changes: pd.DataFrame, tfs: list[str], candidates: list[str]) -> pd.DataFrame:
    """|change| of each candidate target under each TF (the TF itself excluded); keeps the signed change."""
    signed = changes.loc[tfs, candidates].copy()
    for tf in tfs:
        if tf in signed.columns:
            signed.loc[tf, tf] = np.nan
    ranking = signed.abs()
    ranking.attrs["signed"] = signed.fillna(0.0)
    return ranking


def run_dataset(name: str, seeds: list[int], epochs: int | None) -> list[dict]:
    screen = SCREENS[name]
    path = DATA_DIR / screen.file
    if not path.is_file():
        print(f"skip {name}: {path} not found (set MTPERT_DATA_DIR)")
        return []
    spec = screen.spec
    data = prepare(ad.read_h5ad(path), spec, n_hvg=0)
    prior = read_prior(PRIOR, data)
    edges = prior.edges
    perturbed = sorted(single_changes(data, spec).index)
    sources = {s.upper() for s in edges["source"]}
    tfs = [p for p in perturbed if p.upper() in sources]
    measured = list(data.var_names)
    known = edges.dropna(subset=["target_gene"])
    known = known[known["source"].str.upper().isin({t.upper() for t in tfs})]
    upper_tf = {t.upper(): t for t in tfs}
    truth = pd.DataFrame(False, index=tfs, columns=measured)
    sign = pd.DataFrame(0.0, index=tfs, columns=measured)
    for source, target, weight in zip(known["source"], known["target_gene"], known["weight"], strict=True):
        tf = upper_tf[source.upper()]
        truth.loc[tf, target] = True
        sign.loc[tf, target] = np.sign(weight) * screen.direction
    mask_candidates = [p for p in perturbed if p in set(measured)]
    print(
        f"{name}: {len(perturbed)} perturbed genes, {len(tfs)} CollecTRI regulators ({', '.join(tfs)}); "
        f"{int(truth.to_numpy().sum())} CollecTRI edges from them to the {len(measured)} measured genes, "
        f"{int(truth[mask_candidates].to_numpy().sum())} to measured perturbed genes. {prior.summary()}"
    )
    base = {"dataset": name, "tfs": len(tfs)}
    rows = []
    observed = single_changes(data, spec)
    for reading, candidates in (("regulon", measured), ("mask", mask_candidates)):
        rank = signed_ranking(observed, tfs, candidates)
        rows.append(base | {"reading": reading, "method": "fold_change", "seed": np.nan}
                    | score(truth[candidates], rank, sign[candidates]))  # fmt: skip

    folds = np.array_split(np.random.default_rng(0).permutation(tfs), 2)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            fitted: dict[str, list[tuple[object, list[str]]]] = {}
            for method, model_name, options in (
                ("gpo_vae", "gpo_vae", {}),
                ("sams_vae", "sams_vae", {}),
                ("mtae", "mtae", {}),
            ):
                fitted[method] = [(fit(model_name, spec, data, seed, epochs, options), tfs)]
            fitted["gpo_vae_prior"] = []
            for k, fold in enumerate(folds):
                table = edges[~edges["source"].str.upper().isin({t.upper() for t in fold})]
                file = Path(tmp) / f"prior_{name}_{seed}_{k}.tsv"
                table[["source", "target", "weight"]].to_csv(file, sep="\t", index=False)
                options = {"alignment": "prior", "prior": str(file)}
                try:
                    fitted["gpo_vae_prior"].append((fit("gpo_vae", spec, data, seed, epochs, options), list(fold)))
                except DataError as error:  # too few prior edges between perturbed genes to align to
                    print(f"  gpo_vae_prior not fitted on {name}: {error}")
                    del fitted["gpo_vae_prior"]
                    break
            for method, parts in fitted.items():
                regulon = pd.concat([predicted_changes(m, data, spec, part) for m, part in parts]).loc[tfs]
                rank = signed_ranking(regulon, tfs, measured)
                rows.append(base | {"reading": "regulon", "method": method, "seed": seed}
                            | score(truth, rank, sign))  # fmt: skip
                if method == "mtae":
                    continue
                graph = pd.concat(
                    [
                        m.regulatory_graph().pivot(index="regulator", columns="target", values="mask_probability").loc[part]
                        for m, part in parts
                    ]
                ).loc[tfs]  # fmt: skip
                rank = signed_ranking(graph.reindex(columns=mask_candidates), tfs, mask_candidates)
                rows.append(base | {"reading": "mask", "method": method, "seed": seed}
                            | score(truth[mask_candidates], rank, None))  # fmt: skip
    return rows


def fit(model_name: str, spec: DatasetSpec, data: ad.AnnData, seed: int, epochs: int | None, options: dict):
    """One model fitted on every cell (single-threaded, so that timings compare)."""
    seed_everything(seed)
    if epochs is not None:
        options = options | {"max_epochs": epochs}
    start = time.perf_counter()
    model = get_model(model_name)(spec, seed=seed, num_threads=1, progress=False, **options)
    model.fit(data)
    print(f"  {model_name} {options.get('alignment', '')} seed {seed}: {time.perf_counter() - start:.0f} s")
    return model


def report(table: pd.DataFrame, command: str, seconds: float) -> str:
    lines = ["# Agreement of learned regulator -> target edges with CollecTRI on real screens\n",
             provenance(command, seconds),
             ("Fitted on every cell of each screen; CollecTRI (human) edges from the perturbed genes that "
             "are CollecTRI regulators, to the measured genes (`regulon`) or to the measured perturbed genes "
             "(`mask`, GPO-VAE's own graph). `gpo_vae_prior` is aligned to CollecTRI without the scored "
             "regulators (two folds). Models: mean ± std over seeds; `fold_change` is the measured change "
             "(no seed). `chance_auprc`: AUPRC of a random ranking. `sign_agreement`: share of true edges "
             "whose change has CollecTRI's sign (0.5 by chance). See the docstring of "
             "`benchmarks/grn_real/grn_real.py` for the caveats.\n")]  # fmt: skip
    metrics = ["auroc", "auprc", "per_tf_auroc", "sign_agreement"]
    for (dataset, reading), part in table.groupby(["dataset", "reading"], sort=False):
        first = part.iloc[0]
        lines.append(
            f"## {dataset}, {reading}\n\n{first['tfs']} regulators ({first['tfs_scored']} with a true and a false "
            f"candidate); {first['true_edges']} true edges of {first['candidates']} candidates "
            f"(chance AUPRC {first['chance_auprc']:.3f}).\n"
        )
        mean = part.groupby("method", sort=False)[metrics].mean()
        std = part.groupby("method", sort=False)[metrics].std()
        cells = mean.map(lambda v: f"{v:.3f}") + std.map(lambda v: "" if np.isnan(v) else f" ± {v:.3f}")
        lines.append(cells.to_markdown() + "\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="papalexi,norman")
    parser.add_argument("--seeds", default="1,2,19193")
    parser.add_argument("--epochs", type=int, default=None, help="max epochs (default: each model's own)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    table = pd.DataFrame([row for name in args.datasets.split(",") for row in run_dataset(name, seeds, args.epochs)])
    if table.empty:
        sys.exit("No dataset found; nothing recorded.")
    record("grn_real", table, lambda command, seconds: report(table, command, seconds), start)


if __name__ == "__main__":
    main()
