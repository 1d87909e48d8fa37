"""RNA -> surface protein on paired cells: which fusion works, against simple baselines, and do the
attributions find each protein's own gene?

Run: taskset -c 1 nice -n 10 python benchmarks/crossmodal/crossmodal.py [--seeds 1,2,19193] [--folds 5]

Data: the ECCITE-seq PBMCs (Mimitou 2019; 500 cells, 49 ADTs) from ``$MTPERT_DATA_DIR``, and a
simulated pair with a known truth (:func:`mtpert.data.add_proteins`: 15 proteins each driven by one
gene, 640 cells). RNA is log-normalized (the 2,000 most variable genes of the training cells plus
every protein's coding gene), proteins CLR-transformed (:mod:`mtpert.data.modalities`).

* Prediction: ``--folds``-fold cross-validation over cells; each model predicts the held-out
  fold's proteins from its RNA; per protein, Pearson r over all cells of the out-of-fold
  predictions against the measured values. Models: ``own_gene`` (the protein's coding gene through
  a straight line), ``ridge`` (on 50 RNA PCs), ``knn`` (15 neighbours in 30 RNA PCs) and the
  multimodal autoencoder with each fusion (:class:`mtpert.models.crossmodal.MultimodalAE`), one
  run per seed. Noise ceiling: each cell's ADT counts split in two by binomial thinning, one half
  (CLR) correlated with the other across cells, per protein (mean of 5 splits): how well a
  half-depth measurement predicts its twin.
* Attributions: each fusion fitted on every cell (first seed), integrated gradients of each
  protein's prediction to the input genes (mean absolute attribution over cells), and the rank of
  the protein's coding gene among them (:func:`mtpert.models.attribution.own_feature_ranks`);
  ``ridge``'s own coefficients mapped back to genes as the linear reference.

Writes benchmarks/crossmodal/crossmodal.{md,csv} and crossmodal_attribution.csv.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import REPO, RESULTS, pinned_command, provenance

from mtpert._array import dense
from mtpert.data import add_proteins, simulate
from mtpert.data.modalities import clr, coding_genes, paired
from mtpert.io import atomic_write, write_table
from mtpert.models.attribution import attribute_crossmodal, own_feature_ranks
from mtpert.models.crossmodal import (
    FUSIONS,
    MultimodalAE,
    NeighbourMean,
    OwnGene,
    RidgeMap,
    feature_pearson,
)

DATA_DIR = os.environ.get("MTPERT_DATA_DIR", str(REPO.parent / "shared" / "data"))
N_HVG = 2000


def load(name: str) -> tuple[ad.AnnData, dict[str, str | None]] | None:
    """The paired data and each protein's coding gene."""
    if name == "simulated":
        sim = add_proteins(simulate(n_cell_types=4, n_genes=400, n_cells=80, perturbations=("drug",), seed=0), n_proteins=15, seed=0)
        return sim, dict(sim.uns["simulation"]["proteins"])
    path = os.path.join(DATA_DIR, "mimitou2019_eccite_pbmc_500.h5ad")
    if not os.path.isfile(path):
        print(f"skip eccite: {path} not found (set MTPERT_DATA_DIR)")
        return None
    data = ad.read_h5ad(path)
    return data, coding_genes(list(data.uns["protein_names"]), list(data.var_names))


def genes_for(rna: ad.AnnData, cells: np.ndarray, own: dict[str, str | None]) -> list[str]:
    """The most variable genes of ``cells`` and every coding gene (so that attributions can find it)."""
    n = min(N_HVG, rna.n_vars - 1)
    table = sc.pp.highly_variable_genes(rna[cells].copy(), n_top_genes=n, inplace=False)
    chosen = set(rna.var_names[table["highly_variable"].to_numpy()]) | {g for g in own.values() if g in rna.var_names}
    return [g for g in rna.var_names if g in chosen]


def models(own: dict[str, str | None], seed: int, first: bool) -> list:
    baselines = [OwnGene(own), RidgeMap(), NeighbourMean()] if first else []
    return baselines + [MultimodalAE(fusion, seed=seed, num_threads=1) for fusion in FUSIONS]


def cross_validate(rna: ad.AnnData, prot: ad.AnnData, own: dict[str, str | None], seeds: list[int], folds: int) -> pd.DataFrame:
    order = np.random.default_rng(0).permutation(rna.n_obs)
    parts = np.array_split(order, folds)
    predictions: dict[tuple[str, int], np.ndarray] = {}
    for k, test in enumerate(parts):
        train = np.setdiff1d(order, test)
        genes = genes_for(rna, train, own)
        source = rna[:, genes]
        for i, seed in enumerate(seeds):
            for model in models(own, seed, first=i == 0):
                model.fit(source[train], prot[train])
                key = (model.name, 0 if model.name in ("own_gene", "ridge", "knn") else seed)
                predictions.setdefault(key, np.zeros(prot.shape, dtype=np.float32))[test] = model.predict(source[test]).X
        print(f"  fold {k + 1}/{folds} done", flush=True)
    rows = []
    for (name, seed), values in predictions.items():
        r = feature_pearson(prot, ad.AnnData(values, obs=prot.obs[[]], var=prot.var[[]]))
        rows += [{"model": name, "seed": seed, "protein": p, "pearson": v, "has_gene": own.get(p) is not None} for p, v in r.items()]
    return pd.DataFrame(rows)


def noise_ceiling(counts: np.ndarray, names: list[str], repeats: int = 5) -> pd.Series:
    rng = np.random.default_rng(0)
    values = []
    for _ in range(repeats):
        half = rng.binomial(counts.astype(np.int64), 0.5)
        a, b = clr(half), clr(counts - half)
        values.append([np.corrcoef(a[:, j], b[:, j])[0, 1] if a[:, j].std() > 0 and b[:, j].std() > 0 else np.nan for j in range(a.shape[1])])
    return pd.Series(np.nanmean(values, 0), index=names)


def attributions(rna: ad.AnnData, prot: ad.AnnData, own: dict[str, str | None], seed: int) -> pd.DataFrame:
    genes = genes_for(rna, np.arange(rna.n_obs), own)
    source = rna[:, genes]
    rows = []
    for fusion in FUSIONS:
        model = MultimodalAE(fusion, seed=seed, num_threads=1).fit(source, prot)
        ranks = own_feature_ranks(attribute_crossmodal(model, source), own)
        rows.append(ranks.assign(model=model.name))
    ridge = RidgeMap().fit(source, prot)
    weights = np.abs(ridge.pca.components_.T @ ridge.ridge.coef_.T)  # genes x proteins
    linear = pd.DataFrame(weights, index=genes, columns=prot.var_names)
    rows.append(own_feature_ranks(linear, own).assign(model="ridge (coefficients)"))
    return pd.concat(rows, ignore_index=True)


def report(pred: pd.DataFrame, attr: pd.DataFrame, command: str, seconds: float) -> str:
    lines = ["# Cross-modal prediction (RNA -> surface protein) and the own-gene check of attributions\n", provenance(command, seconds)]
    for dataset, part in pred.groupby("dataset", sort=False):
        ceiling = part[part["model"] == "noise_ceiling"].set_index("protein")["pearson"]
        scored = part[part["model"] != "noise_ceiling"]
        per_seed = scored.groupby(["model", "seed"])["pearson"].mean().groupby("model")
        gene = scored[scored["has_gene"]].groupby(["model", "seed"])["pearson"].mean().groupby("model").mean()
        table = pd.DataFrame({"mean_pearson": per_seed.mean(), "std_over_seeds": per_seed.std(), "mean_pearson_proteins_with_gene": gene})
        table = table.sort_values("mean_pearson", ascending=False)
        lines += [f"## {dataset}: {part['protein'].nunique()} proteins\n",
                  f"Per-protein Pearson r of out-of-fold predictions, mean over proteins (± std over seeds for the autoencoders). "
                  f"Noise ceiling (half-depth ADT vs its twin): mean {ceiling.mean():.3f}.\n",
                  table.to_markdown(floatfmt=".3f") + "\n"]  # fmt: skip
        mine = attr[attr["dataset"] == dataset]
        if len(mine):
            check = mine.groupby("model", sort=False).agg(
                proteins=("rank", "size"), median_rank=("rank", "median"),
                top10=("rank", lambda r: float(np.mean(r <= 10))), top1=("rank", lambda r: float(np.mean(r == 1))),
                candidates=("candidates", "first"),
            )  # fmt: skip
            lines += ["Own-gene check: rank of each protein's coding gene among the input genes by attribution "
                      f"(random: median {check['candidates'].iloc[0] / 2:.0f}, top-10 share {10 / check['candidates'].iloc[0]:.3f}).\n",
                      check.to_markdown(floatfmt=".3f") + "\n"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="eccite,simulated")
    parser.add_argument("--seeds", default="1,2,19193")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    preds, attrs = [], []
    for name in args.datasets.split(","):
        loaded = load(name)
        if loaded is None:
            continue
        data, own = loaded
        rna, prot = paired(data, "protein_counts")
        print(f"{name}: {rna.n_obs} cells, {rna.n_vars} genes, {prot.n_vars} proteins ({sum(g is not None for g in own.values())} with a measured coding gene)", flush=True)
        table = cross_validate(rna, prot, own, seeds, args.folds)
        ceiling = noise_ceiling(dense(prot.layers["counts"]), list(prot.var_names))
        table = pd.concat([table, pd.DataFrame({"model": "noise_ceiling", "seed": 0, "protein": ceiling.index, "pearson": ceiling.to_numpy(),
                                                "has_gene": [own.get(p) is not None for p in ceiling.index]})])  # fmt: skip
        preds.append(table.assign(dataset=name))
        attrs.append(attributions(rna, prot, own, seeds[0]).assign(dataset=name))
    if not preds:
        sys.exit("No dataset found; nothing recorded.")
    pred, attr = pd.concat(preds, ignore_index=True), pd.concat(attrs, ignore_index=True)
    write_table(pred, RESULTS / "crossmodal.csv")
    write_table(attr, RESULTS / "crossmodal_attribution.csv")
    text = report(pred, attr, pinned_command(), time.perf_counter() - start)
    atomic_write(RESULTS / "crossmodal.md", lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
