"""Simulated perturbation experiments with a known answer.

Real data never tells us the true response of a held-out cell type, so models and metrics are
checked on counts drawn from a generative model whose truth is stored alongside them:

* gene ``g`` in a control cell of type ``t`` has mean ``size_factor * exp(base_g + type_g,t)``:
  a log-normal baseline, plus a cell-type program that shifts a subset of genes;
* perturbation ``p`` at dose ``d`` adds ``hill(d) * program_p,t`` to the log mean, where
  ``hill(d) = d^n / (ec50^n + d^n)`` and the program mixes a part shared by every cell type with a
  type-specific part (``type_specificity`` sets the mix: 0 makes every type respond identically);
* counts are negative binomial around that mean (``var = mu + dispersion * mu^2``).

With ``n_species > 1`` every species has every cell type (the same tissue profiled in each
species, as in Hagai 2018), so a population is a (species, cell type) pair, named
``'<species>.<type>'`` in the cell-type column so that each population is one group everywhere
(splits, truth, evaluation); ``obs[species_key]`` holds the species. Species differ in baseline (a
species program, drawn like the cell-type programs) and in response: each perturbation's
responsive genes are a *conserved* set, with the same effects in every species, plus a set of
*species-specific* genes drawn for each species. Held out, a species' conserved response can be
learned from the other species; its own genes cannot.

The response changes a cell's expected total count (by a few percent with the defaults), so after
total-count normalization every gene shifts slightly, as in real data. :func:`true_response` is
the change in expected counts and ignores that; :func:`true_log_means` includes it.

Everything the generator used is in ``adata.uns['simulation']`` (see :func:`simulate`), and
:func:`true_response` / :func:`true_log_means` read it back per group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from mtpert.data.spec import DatasetSpec
from mtpert.errors import DataError

UNS_KEY = "simulation"
"""Key of the ground truth in ``adata.uns``."""

DEFAULT_DOSE_KEY = "dose"
"""obs column of the dose when the spec names none."""


def hill(dose: np.ndarray | float, ec50: float, n: float) -> np.ndarray:
    """Fraction of the full response reached at ``dose`` (0 at dose 0, 1/2 at ``ec50``, -> 1)."""
    d = np.asarray(dose, dtype=float)
    return d**n / (ec50**n + d**n)


def simulate(
    *,
    n_cell_types: int = 4,
    n_genes: int = 300,
    n_cells: int = 100,
    perturbations: Sequence[str] = ("stimulated",),
    doses: Sequence[float] = (1.0,),
    type_specificity: float = 0.3,
    responsive_fraction: float = 0.1,
    effect_size: float = 1.0,
    ec50: float = 0.5,
    hill_n: float = 2.0,
    type_program_fraction: float = 0.2,
    type_effect: float = 1.0,
    library_size: float = 2000.0,
    library_sd: float = 0.3,
    dispersion: float = 0.2,
    n_species: int = 1,
    conserved_fraction: float = 0.5,
    species_key: str = "species",
    spec: DatasetSpec | None = None,
    seed: int = 0,
) -> AnnData:
    """Draw raw counts for every cell type under control and each perturbation and dose.

    Args:
        n_cell_types: number of cell types (``type_0``, ``type_1``, ...).
        n_genes: number of genes.
        n_cells: cells in each (cell type, condition, dose) group, control included.
        perturbations: condition labels of the perturbations; the dose is a separate obs column.
        doses: doses applied for every perturbation (positive).
        type_specificity: in [0, 1]; 1 minus the correlation of two cell types' responses.
            0: every type has the same log-fold-change, so a mean-shift baseline is exactly right.
        responsive_fraction: fraction of genes each perturbation's program acts on (a random
            subset, some up, some down), the same in every cell type; with type_specificity > 0
            the type-specific part can nearly cancel the shared one for a gene in some type.
        effect_size: scale of the log-fold-changes (natural log) at full response
            (``hill = 1``): magnitudes are uniform in [0.5, 1.5] * effect_size, exactly so when
            type_specificity is 0.
        ec50, hill_n: dose-response curve ``hill(d) = d^n / (ec50^n + d^n)``; the defaults give
            80% of the full response at dose 1.
        type_program_fraction: fraction of genes each cell-type program shifts.
        type_effect: standard deviation of those shifts (natural log), which makes types separable.
        library_size: expected total counts of a control cell with size factor 1.
        library_sd: standard deviation of the log size factors (mean size factor 1).
        dispersion: negative binomial dispersion (> 0; variance ``mu + dispersion * mu^2``).
        n_species: number of species (``species_0``, ...); 1 gives no species column and plain
            cell-type names. Above 1, see the module docstring; species programs use
            ``type_program_fraction`` and ``type_effect`` too.
        conserved_fraction: in [0, 1], with ``n_species > 1``: fraction of each perturbation's
            responsive genes that respond alike in every species; the rest differ per species.
        species_key: obs column of the species, with ``n_species > 1``.
        spec: obs keys and control label to write; default ``DatasetSpec()`` with dose column
            ``'dose'``. Control cells get ``spec.control_dose``.
        seed: seed of the numpy Generator; the same arguments always give the same data.

    Returns:
        AnnData with sparse CSR int32 counts in ``X``; obs holds cell type, condition and a
        numeric dose. ``uns['simulation']`` holds ``params`` (these arguments), ``spec`` (the
        obs keys, as :meth:`DatasetSpec.to_dict` without unset fields), ``groups`` (one row per
        cell type x condition x dose, indexed ``g0``, ``g1``, ...), ``genes``, ``mean_counts``
        and ``lfc`` (arrays, groups x genes in those orders: expected counts of a cell with size
        factor 1, and natural-log fold change against the same type's control) and
        ``responsive`` (per perturbation, the genes its program moves in any species). With
        ``n_species > 1``, ``groups`` has a ``species`` column, and there are ``conserved`` (per
        perturbation, its genes shared by every species) and ``species_responsive`` (per species,
        per perturbation, the genes it moves in that species).
    """
    spec = spec or DatasetSpec()
    spec = replace(spec, dose_key=spec.dose_key or DEFAULT_DOSE_KEY)
    perturbations = [str(p) for p in perturbations]
    doses = [float(d) for d in doses]
    problems = [
        (min(n_cell_types, n_genes, n_cells) < 1, "n_cell_types, n_genes and n_cells must be >= 1"),
        (not perturbations, "give at least one perturbation"),
        (
            len(set(perturbations)) != len(perturbations),
            f"perturbation names repeat: {perturbations}",
        ),
        (
            spec.control in perturbations,
            f"'{spec.control}' is the control label; rename that perturbation",
        ),
        (not doses, "give at least one dose"),
        (len(set(doses)) != len(doses), f"doses repeat: {doses}"),
        (
            not all(np.isfinite(d) and d > 0 for d in doses),
            f"doses must be positive and finite, got {doses}",
        ),
        (
            not 0.0 <= type_specificity <= 1.0,
            f"type_specificity must be in [0, 1], got {type_specificity}",
        ),
        (
            not 0.0 < responsive_fraction <= 1.0,
            f"responsive_fraction must be in (0, 1], got {responsive_fraction}",
        ),
        (
            not 0.0 <= type_program_fraction <= 1.0,
            f"type_program_fraction must be in [0, 1], got {type_program_fraction}",
        ),
        (library_size <= 0 or library_sd < 0, "library_size must be > 0 and library_sd >= 0"),
        (
            dispersion <= 0,
            f"dispersion must be > 0 (got {dispersion}); small values approach Poisson",
        ),
        (ec50 <= 0 or hill_n <= 0, "ec50 and hill_n must be > 0"),
        (n_species < 1, f"n_species must be >= 1, got {n_species}"),
        (
            not 0.0 <= conserved_fraction <= 1.0,
            f"conserved_fraction must be in [0, 1], got {conserved_fraction}",
        ),
        (
            n_species > 1 and species_key in spec.obs_keys,
            f"species_key '{species_key}' is already an obs key of the spec; pick another name",
        ),
    ]
    for failed, message in problems:
        if failed:
            raise DataError(f"simulate: {message}.")
    rng = np.random.default_rng(seed)
    genes = [f"gene_{i:0{len(str(n_genes - 1))}d}" for i in range(n_genes)]
    types = [f"type_{i}" for i in range(n_cell_types)]
    species = [f"species_{i}" for i in range(n_species)]
    populations = [  # (species index, type index, cell-type label)
        (s, t, f"{species[s]}.{types[t]}" if n_species > 1 else types[t])
        for s in range(n_species)
        for t in range(n_cell_types)
    ]
    cell_types = [label for _, _, label in populations]

    # baseline, cell-type and species programs (natural-log means of a cell with size factor 1)
    weights = rng.lognormal(0.0, 1.0, n_genes)
    base = np.log(library_size * weights / weights.sum())
    type_shift, species_shift = np.zeros((n_cell_types, n_genes)), np.zeros((n_species, n_genes))
    for shift in (type_shift, species_shift) if n_species > 1 else (type_shift,):
        for row in shift:
            shifted = rng.random(n_genes) < type_program_fraction
            row[shifted] = rng.normal(0.0, type_effect, shifted.sum())

    # response programs: one shared and one type-specific part per perturbation, on the same genes;
    # species 1, 2, ... keep the conserved genes (and effects) and move their own other genes
    n_responsive = max(1, round(responsive_fraction * n_genes))
    n_conserved = n_responsive if n_species == 1 else round(conserved_fraction * n_responsive)
    programs = np.zeros((len(perturbations), n_species, n_cell_types, n_genes))
    gene_names = np.asarray(genes, dtype=object)
    conserved: dict[str, np.ndarray] = {}
    by_species: dict[str, dict[str, np.ndarray]] = {name: {} for name in species}
    for p, name in enumerate(perturbations):
        chosen = rng.choice(n_genes, n_responsive, replace=False)
        idx = np.sort(chosen)
        programs[p][:, :, idx] = _program(rng, n_responsive, n_cell_types, effect_size, type_specificity)
        kept = np.sort(chosen[:n_conserved])
        by_species[species[0]][name] = gene_names[idx]
        for s in range(1, n_species):
            own = np.sort(
                rng.choice(np.setdiff1d(np.arange(n_genes), kept), n_responsive - n_conserved, replace=False)
            )
            programs[p, s][:, np.setdiff1d(idx, kept)] = 0.0
            programs[p, s][:, own] = _program(rng, len(own), n_cell_types, effect_size, type_specificity)
            by_species[species[s]][name] = gene_names[np.union1d(kept, own)]
        conserved[name] = gene_names[kept]
    responsive = {
        name: gene_names[np.flatnonzero(programs[p].any(axis=(0, 1)))]
        for p, name in enumerate(perturbations)
    }

    rows, log_means = [], []
    for s, t, cell_type in populations:
        control_mean = base + species_shift[s] + type_shift[t]
        rows.append((cell_type, spec.control, spec.control_dose, species[s]))
        log_means.append(control_mean)
        for p, name in enumerate(perturbations):
            for dose in doses:
                rows.append((cell_type, name, dose, species[s]))
                log_means.append(control_mean + hill(dose, ec50, hill_n) * programs[p, s, t])
    group_ids = [f"g{i}" for i in range(len(rows))]
    groups = pd.DataFrame(rows, columns=["cell_type", "condition", "dose", "species"], index=group_ids)
    if n_species == 1:
        groups = groups.drop(columns="species")
    log_mu = np.stack(log_means)
    control_of = {row[0]: i for i, row in enumerate(rows) if row[1] == spec.control}
    lfc = log_mu - log_mu[[control_of[ct] for ct in groups["cell_type"]]]

    size_factors = rng.lognormal(-(library_sd**2) / 2, library_sd, (len(rows), n_cells))
    counts = _nb(rng, size_factors[:, :, None] * np.exp(log_mu)[:, None, :], dispersion)
    X = sp.csr_matrix(counts.reshape(-1, n_genes).astype(np.int32))

    obs = pd.DataFrame(
        {
            spec.cell_type_key: pd.Categorical(
                np.repeat(groups["cell_type"].to_numpy(), n_cells), categories=cell_types
            ),
            spec.condition_key: pd.Categorical(
                np.repeat(groups["condition"].to_numpy(), n_cells),
                categories=[spec.control, *perturbations],
            ),
            spec.dose_key: np.repeat(groups["dose"].to_numpy(dtype=float), n_cells),
        },
        index=[f"cell_{i}" for i in range(X.shape[0])],
    )
    if n_species > 1:
        obs[species_key] = pd.Categorical(
            np.repeat(groups["species"].to_numpy(), n_cells), categories=species
        )
    adata = AnnData(X, obs=obs, var=pd.DataFrame(index=genes))
    params = {
        "n_cell_types": n_cell_types,
        "n_genes": n_genes,
        "n_cells": n_cells,
        "perturbations": perturbations,
        "doses": doses,
        "type_specificity": float(type_specificity),
        "responsive_fraction": float(responsive_fraction),
        "effect_size": float(effect_size),
        "ec50": float(ec50),
        "hill_n": float(hill_n),
        "type_program_fraction": float(type_program_fraction),
        "type_effect": float(type_effect),
        "library_size": float(library_size),
        "library_sd": float(library_sd),
        "dispersion": float(dispersion),
        "n_species": int(n_species),
        "conserved_fraction": float(conserved_fraction),
        "species_key": species_key,
        "seed": int(seed),
    }
    adata.uns[UNS_KEY] = {
        "params": params,
        "spec": {k: v for k, v in spec.to_dict().items() if v is not None},
        "groups": groups,
        "genes": np.asarray(genes, dtype=object),
        "mean_counts": np.exp(log_mu),
        "lfc": lfc,
        "responsive": responsive,
    }
    if n_species > 1:
        adata.uns[UNS_KEY] |= {"conserved": conserved, "species_responsive": by_species}
    return adata


def true_response(
    adata: AnnData, cell_type: str, condition: str, dose: float | None = None
) -> pd.Series:
    """True natural-log fold change per gene of ``condition`` vs control in ``cell_type``.

    The change in expected counts at ``dose``, which may be left out when the condition was
    simulated at a single dose.
    """
    truth = _truth(adata)
    row = truth["lfc"][_group(truth, cell_type, condition, dose)]
    return pd.Series(row, index=pd.Index(truth["genes"], dtype=str), name="lfc")


def true_log_means(
    adata: AnnData,
    cell_type: str,
    condition: str,
    dose: float | None = None,
    *,
    target_sum: float = 1e4,
    n_samples: int = 4000,
) -> pd.Series:
    """Expected log-normalized expression per gene: ``E[log1p(target_sum * x / sum(x))]``.

    This is what a perfect model's mean prediction is compared against after
    :func:`mtpert.data.log_normalize` (same ``target_sum``). There is no closed form for the mean
    of a log of normalized counts, so it is a Monte Carlo estimate over ``n_samples`` fresh cells
    drawn from the group's distribution (size factors and negative binomial counts). Its standard
    error per gene is the per-cell standard deviation of log expression (about 1 at most) over
    ``sqrt(n_samples)``: under 0.02 with the default. Seeded by the simulation seed and the group,
    so repeated calls agree exactly.
    """
    truth = _truth(adata)
    group = _group(truth, cell_type, condition, dose)
    params = truth["params"]
    mu = truth["mean_counts"][group]
    rng = np.random.default_rng([int(params["seed"]), group])
    sd = float(params["library_sd"])
    size_factors = rng.lognormal(-(sd**2) / 2, sd, (n_samples, 1))
    counts = _nb(rng, size_factors * mu, float(params["dispersion"]))
    totals = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    values = np.log1p(target_sum * counts / totals).mean(axis=0)
    return pd.Series(values, index=pd.Index(truth["genes"], dtype=str), name="log_mean")


# ---------------------------------------------------------------------------- helpers
def _program(
    rng: np.random.Generator, n: int, n_types: int, effect_size: float, type_specificity: float
) -> np.ndarray:
    """Log-fold-changes of ``n`` genes in each of ``n_types`` types: a shared and a type-specific part."""
    shared = _effects(rng, n, effect_size)
    specific = np.stack([_effects(rng, n, effect_size) for _ in range(n_types)])
    return np.sqrt(1.0 - type_specificity) * shared + np.sqrt(type_specificity) * specific


def _effects(rng: np.random.Generator, n: int, effect_size: float) -> np.ndarray:
    """Log-fold-changes with random signs and magnitudes uniform in [0.5, 1.5] * effect_size."""
    return rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.5, n) * effect_size


def _nb(rng: np.random.Generator, mu: np.ndarray, dispersion: float) -> np.ndarray:
    """Negative binomial counts with mean ``mu`` and variance ``mu + dispersion * mu^2``."""
    r = 1.0 / dispersion
    return rng.negative_binomial(r, r / (r + mu))


def _truth(adata: AnnData) -> dict:
    if UNS_KEY not in adata.uns:
        raise DataError(
            f"adata.uns has no '{UNS_KEY}' entry, so there is no ground truth to read. Use data "
            "made by mtpert.data.simulate (subsetting keeps uns; concatenating AnnData drops it)."
        )
    return adata.uns[UNS_KEY]


def _group(truth: dict, cell_type: str, condition: str, dose: float | None) -> int:
    """Row of the simulated group (cell type, condition, dose); dose may be None if unambiguous."""
    groups = truth["groups"]
    match = groups[
        (groups["cell_type"].astype(str) == cell_type)
        & (groups["condition"].astype(str) == condition)
    ]
    if match.empty:
        raise DataError(
            f"No simulated group for cell type '{cell_type}' and condition '{condition}'. "
            f"Cell types: {sorted(groups['cell_type'].astype(str).unique())}; conditions: "
            f"{sorted(groups['condition'].astype(str).unique())}."
        )
    doses = match["dose"].to_numpy(dtype=float)
    if dose is None:
        if len(match) > 1:
            raise DataError(f"'{condition}' was simulated at doses {sorted(doses)}; pass dose=.")
        return groups.index.get_loc(match.index[0])
    hit = np.isclose(doses, dose)
    if not hit.any():
        raise DataError(
            f"'{condition}' was not simulated at dose {dose:g}; doses: {sorted(doses)}."
        )
    return groups.index.get_loc(match.index[np.flatnonzero(hit)[0]])
