"""Optimal-transport pairing of control and perturbed cells, for the ``ot`` training objective.

Within one cell type, a perturbed cell has no measured "before": the cell was destroyed by
sequencing. OT supplies a stand-in, the control cell that the cheapest overall matching (squared
Euclidean cost, uniform masses) sends to it. Groups up to ``block_size`` cells per side are
matched exactly (``ot.emd``); larger ones by minibatch OT: both sides are shuffled into blocks of
at most ``block_size`` cells and each block pair is matched exactly, so memory stays at one
``block_size`` x ``block_size`` plan however many cells a group has.
"""

from __future__ import annotations

import math

import numpy as np
import ot

DEFAULT_BLOCK_SIZE = 2000
EMD_MAX_ITER = 1_000_000
"""Iteration cap of the exact solver; POT's default (1e5) can stop short of the optimum."""


def ot_pairs(
    source: np.ndarray, target: np.ndarray, *, block_size: int = DEFAULT_BLOCK_SIZE, seed: int = 0
) -> np.ndarray:
    """For each row of ``target``, the index of its OT partner in ``source``.

    Each target cell takes the source cell carrying most of its mass in the transport plan.
    ``seed`` only matters beyond ``block_size`` cells, where it shuffles cells into blocks.
    """
    if len(source) == 0 or len(target) == 0:
        raise ValueError(f"Cannot pair {len(source)} source with {len(target)} target points.")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}.")
    n_blocks = math.ceil(max(len(source), len(target)) / block_size)
    if n_blocks == 1:
        return _exact_pairs(source, target)
    rng = np.random.default_rng(seed)
    source_blocks = _blocks(len(source), n_blocks, rng)
    target_blocks = _blocks(len(target), n_blocks, rng)
    partner = np.empty(len(target), dtype=np.int64)
    for s, t in zip(source_blocks, target_blocks, strict=True):
        partner[t] = s[_exact_pairs(source[s], target[t])]
    return partner


def pair_within_groups(
    coords: np.ndarray,
    cell_type: np.ndarray,
    condition: np.ndarray,
    is_control: np.ndarray,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    seed: int = 0,
) -> np.ndarray:
    """Row of each perturbed cell's OT partner among the control cells of its cell type.

    ``condition`` labels the perturbed groups (include the dose in it where there are doses).
    Control cells, and perturbed cells of a cell type without control cells, get -1.
    """
    partner = np.full(len(coords), -1, dtype=np.int64)
    for t in np.unique(cell_type):
        in_type = cell_type == t
        controls = np.flatnonzero(in_type & is_control)
        if not len(controls):
            continue
        for c in np.unique(condition[in_type & ~is_control]):
            cells = np.flatnonzero(in_type & ~is_control & (condition == c))
            partner[cells] = controls[
                ot_pairs(coords[controls], coords[cells], block_size=block_size, seed=seed)
            ]
    return partner


def _blocks(n: int, n_blocks: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` indices shuffled into ``n_blocks`` blocks; a side with fewer points than blocks (so
    fewer than ``block_size``) is used whole in every block."""
    if n < n_blocks:
        return [np.arange(n)] * n_blocks
    return np.array_split(rng.permutation(n), n_blocks)


def _exact_pairs(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    cost = ot.dist(np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64))
    plan = ot.emd(ot.unif(len(source)), ot.unif(len(target)), cost, numItermax=EMD_MAX_ITER)
    return plan.argmax(axis=0)
