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

:func:`simulate_screen` draws a pooled genetic screen instead: regulators knocked down (or
activated) singly and in pairs across cell lines, over a known regulatory network with signed
edges, line-specific responses, non-additive pairs on a known subset of genes, guides of differing
efficiency, and perturbations that change nothing (see its docstring for the model).

Everything the generator used is in ``adata.uns['simulation']`` (see :func:`simulate` and
:func:`simulate_screen`), and :func:`true_response` / :func:`true_log_means` read it back per group
(a screen's line is its cell type).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import combinations
from typing import Literal, get_args

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

ScreenMode = Literal["knockdown", "activation"]
"""How :func:`simulate_screen` perturbs a regulator: lower it (CRISPRi, knock-out) or raise it
(CRISPRa)."""

SCREEN_MODES: tuple[str, ...] = get_args(ScreenMode)

DEFAULT_SEPARATOR = "+"
"""Text between the parts of a combination (``'A+B'``) when the spec names none."""

DEFAULT_GUIDE_KEY = "guide"
"""obs column of the guide when the spec names none."""

NON_TARGETING = "non-targeting"
"""Guide label stem of the control cells of :func:`simulate_screen` (``non-targeting_g1``, ...)."""


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
    type_shift = _baseline_programs(rng, n_cell_types, n_genes, type_program_fraction, type_effect)
    species_shift = (
        _baseline_programs(rng, n_species, n_genes, type_program_fraction, type_effect)
        if n_species > 1
        else np.zeros((n_species, n_genes))
    )

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

    cell_means = np.broadcast_to(np.exp(log_mu)[:, None, :], (len(rows), n_cells, n_genes))
    counts = _draw_cells(rng, cell_means, library_sd, dispersion)
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


def simulate_screen(
    *,
    n_lines: int = 3,
    n_genes: int = 200,
    n_regulators: int = 12,
    n_targets: int = 8,
    n_pairs: int = 8,
    n_cells: int = 100,
    mode: ScreenMode = "knockdown",
    self_effect: float = 1.5,
    effect_size: float = 1.0,
    second_order: bool = True,
    no_effect_fraction: float = 0.25,
    line_specificity: float = 0.3,
    line_program_fraction: float = 0.2,
    line_effect: float = 1.0,
    interaction_fraction: float = 0.5,
    interaction_genes: int = 5,
    interaction_size: float = 1.0,
    n_guides: int = 2,
    guide_efficiency: tuple[float, float] = (0.8, 1.0),
    n_replicates: int = 2,
    replicate_key: str = "replicate",
    library_size: float = 2000.0,
    library_sd: float = 0.3,
    dispersion: float = 0.2,
    spec: DatasetSpec | None = None,
    seed: int = 0,
) -> AnnData:
    """Draw raw counts of a pooled genetic screen over a known regulatory network.

    The model (natural-log means of a cell with size factor 1, counts negative binomial as in
    :func:`simulate`):

    * genes ``reg_00``, ``reg_01``, ... (first in ``var``) are the regulators that are perturbed;
      ``gene_000``, ... are the others. A control cell of line ``l`` has mean
      ``exp(base_g + line_g,l)``: a log-normal baseline (regulators raised to at least the median
      gene, so that their own change is measurable) plus a program per line.
    * Network: regulator ``r`` regulates ``n_targets`` genes drawn from those after it in ``var``
      (other regulators included, so there are no cycles); targets shared between regulators arise
      by chance (about ``n_targets**2 / n_genes`` per pair). Edge ``r -> g`` has a coefficient per
      line, ``c = program / self_effect``, where ``program`` mixes a part shared by every line with
      a line-specific part as in :func:`simulate` (``line_specificity`` is 1 minus the correlation
      of two lines' coefficients): the log change of ``g`` is ``c`` times the log change of ``r``.
    * Perturbing ``r`` with a guide of efficiency ``e`` changes its own log expression by
      ``-e * self_effect`` (``mode='knockdown'``: CRISPRi or knock-out) or ``+e * self_effect``
      (``'activation'``: CRISPRa), so a target moves by ``c * (that change)``: at full efficiency
      a knock-down lowers an activated target (``c > 0``) by ``|program|``, magnitude uniform in
      [0.5, 1.5] * effect_size when line_specificity is 0, and raises a repressed one. With
      ``second_order``, a target that is itself a regulator passes its change on one step to its
      own targets (its coefficients times its change); nothing propagates further.
    * A pair ``A+B`` adds the log changes of its parts (with each cell's two guides), plus, for a
      share ``interaction_fraction`` of the pairs whose two parts have effects, an interaction on
      ``interaction_genes`` genes drawn from those either part moves (never A or B themselves):
      a signed term (size ``interaction_size``, line-specific like the network) times ``e_A * e_B``,
      synergy where it shares the additive change's sign, buffering where it opposes it.
    * ``round(no_effect_fraction * n_regulators)`` regulators change nothing, not even their own
      expression (a guide that fails, or a knock-out whose transcript is kept and whose targets lie
      outside the measured genes): they have no edges, and their pairs are the other part alone.

    Args:
        n_lines: cell lines (``line_0``, ...), written to the spec's cell-type column.
        n_genes: genes, regulators included.
        n_regulators: perturbed genes; each is a single perturbation.
        n_targets: genes each regulator with an effect regulates (at most n_genes - n_regulators).
        n_pairs: random pairs of regulators perturbed together, labelled ``'A+B'`` with the spec's
            combination separator.
        n_cells: cells per (line, condition) group, control included.
        mode: ``'knockdown'`` (lowers the regulator) or ``'activation'`` (raises it).
        self_effect: natural-log change of a perturbed regulator's own expression at full efficiency
            (> 0; 1.5 leaves about 22% of a knocked-down transcript).
        effect_size: scale of the direct targets' log changes at full efficiency (> 0).
        second_order: let a regulated regulator pass its change on to its targets (one step).
        no_effect_fraction: in [0, 1): share of regulators whose perturbation changes nothing.
        line_specificity: in [0, 1]; how much lines' responses differ (0: every line responds
            alike, so a mean-shift baseline is right up to noise).
        line_program_fraction, line_effect: share of genes each line's baseline program shifts,
            and the standard deviation of the shifts (natural log).
        interaction_fraction: in [0, 1]; share of the pairs of two effective regulators that
            interact non-additively.
        interaction_genes: genes (>= 1) an interacting pair acts on beyond the sum of its parts.
        interaction_size: scale of those deviations (natural log, > 0; interaction_fraction 0 turns
            interactions off).
        n_guides: guides per regulator (and non-targeting guides of the control cells), given to
            the cells of each group in equal numbers, at random.
        guide_efficiency: (low, high) in (0, 1]; each guide's efficiency is uniform in it.
        n_replicates: replicates (``rep_1``, ...) the cells of each group are spread over evenly in
            ``obs[replicate_key]``; they share one distribution (no batch effect).
        replicate_key: obs column of the replicate; the spec's batch_key may name it.
        library_size, library_sd, dispersion: as in :func:`simulate`.
        spec: obs keys and control label; default ``DatasetSpec(condition_key='perturbation',
            combination_separator='+', guide_key='guide')``, and a spec without a separator or
            guide key gets those two. It may have no dose key.
        seed: seed of the numpy Generator; the same arguments always give the same data.

    Returns:
        AnnData with sparse CSR int32 counts; obs holds the line (spec's cell-type key), the
        perturbation (condition key: control, ``reg_..`` or ``reg_..+reg_..``), the guide
        (``reg_03_g1``, ``reg_03_g1+reg_07_g2`` for pairs, ``non-targeting_g1`` for controls) and
        the replicate. ``uns['simulation']`` holds, as :func:`simulate` does, ``params``, ``spec``,
        ``groups`` (one row per line x condition: ``cell_type``, ``condition``), ``genes``,
        ``mean_counts`` and ``lfc`` (groups x genes, at the mean efficiency of each perturbation's
        guides, so that :func:`true_response` and :func:`true_log_means` read them), and
        ``responsive`` (per condition, the genes it moves in any line); and for the screen:
        ``regulators`` (the perturbed genes), ``network`` (a table with one row per edge:
        ``source``, ``target``, ``sign`` (+1 activates, -1 represses: the sign of the mean
        coefficient over lines), and one column per line with the coefficient there),
        ``guides`` (indexed by guide: ``perturbation`` and ``efficiency``; 0 for non-targeting),
        ``no_effect`` (the regulators that change nothing) and ``interactions`` (per interacting
        pair, the genes where it departs from the sum of its parts; in ``lfc`` the departure is
        the pair's row minus its parts' rows).
    """
    spec = spec or DatasetSpec(condition_key="perturbation")
    spec = replace(
        spec,
        combination_separator=spec.combination_separator or DEFAULT_SEPARATOR,
        guide_key=spec.guide_key or DEFAULT_GUIDE_KEY,
    )
    low, high = (float(e) for e in guide_efficiency)
    regulators = [f"reg_{i:0{len(str(n_regulators - 1))}d}" for i in range(n_regulators)]
    n_other = n_genes - n_regulators
    genes = regulators + [f"gene_{i:0{len(str(n_other - 1))}d}" for i in range(n_other)]
    lines = [f"line_{i}" for i in range(n_lines)]
    problems = [
        (
            min(n_lines, n_genes, n_regulators, n_cells) < 1,
            "n_lines, n_genes, n_regulators and n_cells must be >= 1",
        ),
        (n_other < 1, f"n_genes ({n_genes}) must exceed n_regulators ({n_regulators})"),
        (
            not 0 <= n_targets <= n_other,
            f"n_targets must be in [0, n_genes - n_regulators = {n_other}], got {n_targets}",
        ),
        (
            not 0 <= n_pairs <= n_regulators * (n_regulators - 1) // 2,
            (
                f"n_pairs must be in [0, {n_regulators * (n_regulators - 1) // 2}] (the pairs of "
                f"{n_regulators} regulators), got {n_pairs}"
            ),
        ),
        (mode not in SCREEN_MODES, f"mode must be one of {SCREEN_MODES}, got {mode!r}"),
        (self_effect <= 0 or effect_size <= 0, "self_effect and effect_size must be > 0"),
        (
            not 0.0 <= no_effect_fraction < 1.0,
            f"no_effect_fraction must be in [0, 1), got {no_effect_fraction}",
        ),
        (
            not 0.0 <= line_specificity <= 1.0,
            f"line_specificity must be in [0, 1], got {line_specificity}",
        ),
        (
            not 0.0 <= line_program_fraction <= 1.0,
            f"line_program_fraction must be in [0, 1], got {line_program_fraction}",
        ),
        (line_effect < 0, f"line_effect must be >= 0, got {line_effect}"),
        (
            not 0.0 <= interaction_fraction <= 1.0,
            f"interaction_fraction must be in [0, 1], got {interaction_fraction}",
        ),
        (
            interaction_genes < 1 or interaction_size <= 0,
            "interaction_genes and interaction_size must be > 0",
        ),
        (min(n_guides, n_replicates) < 1, "n_guides and n_replicates must be >= 1"),
        (
            not 0.0 < low <= high <= 1.0,
            f"guide_efficiency must be (low, high) with 0 < low <= high <= 1, got {guide_efficiency}",
        ),
        (library_size <= 0 or library_sd < 0, "library_size must be > 0 and library_sd >= 0"),
        (
            dispersion <= 0,
            f"dispersion must be > 0 (got {dispersion}); small values approach Poisson",
        ),
        (
            spec.dose_key is not None,
            f"a screen has no doses; use a spec without dose_key (got '{spec.dose_key}')",
        ),
        (
            spec.batch_key not in (None, replicate_key),
            (
                f"the spec's batch_key '{spec.batch_key}' is not the replicate column "
                f"'{replicate_key}'; leave it unset or set it to replicate_key"
            ),
        ),
        (
            replicate_key in {spec.cell_type_key, spec.condition_key, spec.guide_key},
            f"replicate_key '{replicate_key}' is already an obs key of the spec; pick another name",
        ),
        (
            any(spec.combination_separator in name for name in regulators),
            (
                f"the combination separator '{spec.combination_separator}' occurs in the regulator "
                "names (reg_00, ...); use another separator, e.g. '+'"
            ),
        ),
        (
            spec.control in regulators,
            f"the control label '{spec.control}' is a regulator's name; rename it",
        ),
    ]
    for failed, message in problems:
        if failed:
            raise DataError(f"simulate_screen: {message}.")
    rng = np.random.default_rng(seed)
    direction = -1.0 if mode == "knockdown" else 1.0

    # baseline and line programs (natural-log means of a control cell with size factor 1)
    weights = rng.lognormal(0.0, 1.0, n_genes)
    weights[:n_regulators] = np.maximum(weights[:n_regulators], np.median(weights))
    control_log = np.log(library_size * weights / weights.sum()) + _baseline_programs(
        rng, n_lines, n_genes, line_program_fraction, line_effect
    )

    # network: coefficients[l, r, g]; regulators only regulate genes after them, so no cycles
    inert = np.sort(
        rng.choice(n_regulators, round(no_effect_fraction * n_regulators), replace=False)
    )
    effective = np.setdiff1d(np.arange(n_regulators), inert)
    coefficients = np.zeros((n_lines, n_regulators, n_genes))
    for r in effective:
        targets = np.sort(rng.choice(np.arange(r + 1, n_genes), n_targets, replace=False))
        program = _program(rng, n_targets, n_lines, effect_size, line_specificity)
        coefficients[:, r, targets] = program / self_effect

    # response of each line to each regulator at full efficiency: itself, its targets, one more step
    own = np.zeros((n_regulators, n_genes))
    own[effective, effective] = direction * self_effect
    first = own[:, :n_regulators] @ coefficients
    unit = own + first + (first[:, :, :n_regulators] @ coefficients if second_order else 0.0)
    moved = unit.any(axis=0)

    efficiency = rng.uniform(low, high, (n_regulators, n_guides))
    all_pairs = list(combinations(range(n_regulators), 2))
    pairs = [all_pairs[i] for i in np.sort(rng.choice(len(all_pairs), n_pairs, replace=False))]
    candidates = {
        k: np.setdiff1d(np.flatnonzero(moved[a] | moved[b]), [a, b])
        for k, (a, b) in enumerate(pairs)
    }
    eligible = [
        k
        for k, (a, b) in enumerate(pairs)
        if a in effective and b in effective and candidates[k].size
    ]
    interacting = np.sort(
        rng.choice(eligible, round(interaction_fraction * len(eligible)), replace=False)
    )
    interaction = np.zeros((n_pairs, n_lines, n_genes))
    for k in interacting:
        chosen = np.sort(
            rng.choice(candidates[k], min(interaction_genes, candidates[k].size), replace=False)
        )
        interaction[k][:, chosen] = _program(
            rng, chosen.size, n_lines, interaction_size, line_specificity
        )

    separator = spec.combination_separator
    conditions = (
        [(spec.control, (), None)]
        + [(name, (r,), None) for r, name in enumerate(regulators)]
        + [
            (f"{regulators[a]}{separator}{regulators[b]}", (a, b), k)
            for k, (a, b) in enumerate(pairs)
        ]
    )
    guide_names = np.array([[f"{name}_g{i + 1}" for i in range(n_guides)] for name in regulators])
    control_guides = np.array([f"{NON_TARGETING}_g{i + 1}" for i in range(n_guides)])

    def response(
        line: int, parts: tuple[int, ...], pair: int | None, effs: list[np.ndarray]
    ) -> np.ndarray:
        """Log change of every gene (columns) in cells (rows) whose guides for ``parts`` have the
        efficiencies ``effs`` (one array per part, one value per cell)."""
        change = np.zeros((len(effs[0]) if effs else 1, n_genes))
        for p, e in zip(parts, effs, strict=True):
            change += np.multiply.outer(e, unit[line, p])
        if pair is not None:
            change += np.multiply.outer(np.prod(effs, axis=0), interaction[pair, line])
        return change

    rows, lfc, blocks, guides = [], [], [], []
    for line in range(n_lines):
        for label, parts, pair in conditions:
            rows.append((lines[line], label))
            lfc.append(
                response(line, parts, pair, [efficiency[p].mean(keepdims=True) for p in parts])[0]
            )
            picks = [
                rng.permutation(np.arange(n_cells) % n_guides) for _ in range(max(len(parts), 1))
            ]
            cell_change = response(
                line, parts, pair, [efficiency[p, pick] for p, pick in zip(parts, picks)]
            )
            means = np.broadcast_to(np.exp(control_log[line] + cell_change), (n_cells, n_genes))
            blocks.append(
                sp.csr_matrix(_draw_cells(rng, means, library_sd, dispersion).astype(np.int32))
            )
            per_part = [guide_names[p, pick] for p, pick in zip(parts, picks)] or [
                control_guides[picks[0]]
            ]
            guides.extend(separator.join(cell) for cell in zip(*per_part, strict=True))
    groups = pd.DataFrame(
        rows, columns=["cell_type", "condition"], index=[f"g{i}" for i in range(len(rows))]
    )
    lfc = np.stack(lfc)
    line_of = [lines.index(line) for line in groups["cell_type"]]
    X = sp.vstack(blocks, format="csr")

    labels = [label for label, _, _ in conditions]
    obs = pd.DataFrame(
        {
            spec.cell_type_key: pd.Categorical(
                np.repeat(groups["cell_type"].to_numpy(), n_cells), categories=lines
            ),
            spec.condition_key: pd.Categorical(
                np.repeat(groups["condition"].to_numpy(), n_cells), categories=labels
            ),
            spec.guide_key: pd.Categorical(guides),
            replicate_key: pd.Categorical(
                np.tile([f"rep_{i % n_replicates + 1}" for i in range(n_cells)], len(rows)),
                categories=[f"rep_{i + 1}" for i in range(n_replicates)],
            ),
        },
        index=[f"cell_{i}" for i in range(X.shape[0])],
    )
    adata = AnnData(X, obs=obs, var=pd.DataFrame(index=genes))

    gene_names = np.asarray(genes, dtype=object)
    source, target = np.nonzero(coefficients.any(axis=0))
    network = pd.DataFrame(
        {
            "source": gene_names[source],
            "target": gene_names[target],
            "sign": np.sign(coefficients[:, source, target].mean(axis=0)).astype(int),
            **{name: coefficients[line, source, target] for line, name in enumerate(lines)},
        }
    )
    guide_table = pd.DataFrame(
        {
            "perturbation": [spec.control] * n_guides + list(np.repeat(regulators, n_guides)),
            "efficiency": np.concatenate([np.zeros(n_guides), efficiency.ravel()]),
        },
        index=pd.Index([*control_guides, *guide_names.ravel()], name="guide"),
    )
    params = {
        "n_lines": n_lines,
        "n_genes": n_genes,
        "n_regulators": n_regulators,
        "n_targets": n_targets,
        "n_pairs": n_pairs,
        "n_cells": n_cells,
        "mode": mode,
        "self_effect": float(self_effect),
        "effect_size": float(effect_size),
        "second_order": bool(second_order),
        "no_effect_fraction": float(no_effect_fraction),
        "line_specificity": float(line_specificity),
        "line_program_fraction": float(line_program_fraction),
        "line_effect": float(line_effect),
        "interaction_fraction": float(interaction_fraction),
        "interaction_genes": interaction_genes,
        "interaction_size": float(interaction_size),
        "n_guides": n_guides,
        "guide_efficiency": [low, high],
        "n_replicates": n_replicates,
        "replicate_key": replicate_key,
        "library_size": float(library_size),
        "library_sd": float(library_sd),
        "dispersion": float(dispersion),
        "seed": int(seed),
    }
    adata.uns[UNS_KEY] = {
        "params": params,
        "spec": {k: v for k, v in spec.to_dict().items() if v is not None},
        "groups": groups,
        "genes": gene_names,
        "mean_counts": np.exp(control_log[line_of] + lfc),
        "lfc": lfc,
        "responsive": {
            label: gene_names[(lfc[groups["condition"].to_numpy() == label] != 0).any(axis=0)]
            for label in labels[1:]
        },
        "regulators": np.asarray(regulators, dtype=object),
        "network": network,
        "guides": guide_table,
        "no_effect": np.asarray([regulators[r] for r in inert], dtype=object),
        "interactions": {
            conditions[1 + n_regulators + k][0]: gene_names[interaction[k].any(axis=0)]
            for k in interacting
        },
    }
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
    cell_means = np.broadcast_to(mu, (n_samples, len(mu)))
    counts = _draw_cells(rng, cell_means, float(params["library_sd"]), float(params["dispersion"]))
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


def _baseline_programs(
    rng: np.random.Generator, n: int, n_genes: int, fraction: float, effect: float
) -> np.ndarray:
    """``n`` programs (rows) that each shift a random ``fraction`` of genes by N(0, ``effect``)."""
    shifts = np.zeros((n, n_genes))
    for row in shifts:
        shifted = rng.random(n_genes) < fraction
        row[shifted] = rng.normal(0.0, effect, shifted.sum())
    return shifts


def _draw_cells(
    rng: np.random.Generator, mean_counts: np.ndarray, library_sd: float, dispersion: float
) -> np.ndarray:
    """Counts of cells (rows of ``mean_counts``, genes last) whose expected counts at size factor 1
    are ``mean_counts``: each cell gets a log-normal size factor with mean 1."""
    shape = (*mean_counts.shape[:-1], 1)
    size_factors = rng.lognormal(-(library_sd**2) / 2, library_sd, shape)
    return _nb(rng, size_factors * mean_counts, dispersion)


def _nb(rng: np.random.Generator, mu: np.ndarray, dispersion: float) -> np.ndarray:
    """Negative binomial counts with mean ``mu`` and variance ``mu + dispersion * mu^2``."""
    r = 1.0 / dispersion
    return rng.negative_binomial(r, r / (r + mu))


def _truth(adata: AnnData) -> dict:
    if UNS_KEY not in adata.uns:
        raise DataError(
            f"adata.uns has no '{UNS_KEY}' entry, so there is no ground truth to read. Use data "
            "made by mtpert.data.simulate or simulate_screen (subsetting keeps uns; concatenating "
            "AnnData drops it)."
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
    if "dose" not in groups:  # a screen (simulate_screen): one group per (line, condition)
        if dose is not None:
            raise DataError(f"'{condition}' was simulated without doses; leave dose out.")
        return groups.index.get_loc(match.index[0])
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


def add_proteins(
    adata: AnnData,
    *,
    n_proteins: int = 20,
    attenuation: float = 0.5,
    coupling: float = 0.5,
    background: float = 5.0,
    scale: float = 30.0,
    dispersion: float = 0.1,
    seed: int = 0,
) -> AnnData:
    """A copy of simulated ``adata`` (raw counts, e.g. from :func:`simulate`) with a second
    modality: surface-protein counts in ``obsm['protein_counts']``, each protein driven by one gene.

    Protein ``p`` of gene ``g`` (the ``n_proteins`` genes whose mean differs most between the
    groups of cell type and condition) has, in a cell of group ``G`` whose cell type's control
    mean log expression of ``g`` is ``c``: the signal ``s = c + (1 - attenuation) (mean_G - c)
    + coupling (x - mean_G)``, with ``x`` the cell's own log-normalized expression of ``g``, and
    negative-binomial counts of mean ``background + scale * exp(s)``. ``attenuation`` is how much
    of a perturbation's change in the gene the protein has not followed yet (proteins lag their
    mRNA); ``coupling``, how much a cell's own transcript count shows in its protein level.

    ``uns['protein_names']`` names the proteins (``prot_<gene>``), and ``uns['simulation']``
    gains ``proteins`` (protein -> gene, the truth an attribution should find) and these settings.
    """
    if UNS_KEY not in adata.uns or "spec" not in adata.uns[UNS_KEY]:
        raise DataError("add_proteins needs simulated counts (mtpert.data.simulate), whose uns['simulation'] names the groups.")
    if not 0 <= attenuation <= 1 or coupling < 0:
        raise DataError(f"attenuation must lie in [0, 1] and coupling be >= 0; got {attenuation}, {coupling}.")
    if not 1 <= n_proteins <= adata.n_vars:
        raise DataError(f"n_proteins must be between 1 and the {adata.n_vars} genes; got {n_proteins}.")
    rng = np.random.default_rng(seed)
    spec = DatasetSpec(**adata.uns[UNS_KEY]["spec"])
    counts = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    logged = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    obs = adata.obs
    group = (obs[spec.cell_type_key].astype(str) + "|" + obs[spec.condition_key].astype(str)).to_numpy()
    means = pd.DataFrame(logged).groupby(group).mean()
    genes = np.argsort(-means.var(0).to_numpy(), kind="stable")[:n_proteins]
    group_mean = means.loc[group].to_numpy()[:, genes]
    control = obs[spec.condition_key].astype(str).to_numpy() == spec.control
    type_of = obs[spec.cell_type_key].astype(str).to_numpy()
    control_mean = pd.DataFrame(logged[control][:, genes]).groupby(type_of[control]).mean().loc[type_of].to_numpy()
    signal = control_mean + (1 - attenuation) * (group_mean - control_mean) + coupling * (logged[:, genes] - group_mean)
    mu = background + scale * np.exp(signal)
    protein = rng.negative_binomial(1 / dispersion, 1 / (1 + dispersion * mu)).astype(np.float32)
    out = adata.copy()
    names = [f"prot_{adata.var_names[g]}" for g in genes]
    out.obsm["protein_counts"] = sp.csr_matrix(protein)
    out.uns["protein_names"] = np.asarray(names, dtype=object)
    out.uns[UNS_KEY] = dict(out.uns[UNS_KEY]) | {
        "proteins": {n: str(adata.var_names[g]) for n, g in zip(names, genes, strict=True)},
        "protein_params": {"attenuation": attenuation, "coupling": coupling, "background": background,
                           "scale": scale, "dispersion": dispersion, "seed": seed},
    }  # fmt: skip
    return out
