"""Genetic interactions: does a predicted combination depart from additivity where the true one does?

For a combination ``c = A+B`` (or of more parts), the additive expectation is what adding the
true changes of its parts to the control cells gives (Norman et al. 2019; GEARS, Roohani et al.
2024), and the genetic interaction (GI) is the departure of the combination's mean from it, per
gene (``Δ = mean - control mean``, ``x`` a control cell):

    additive     = mean over control cells of max(x + Δ_truth(A) + Δ_truth(B), 0)
    true GI      = m_truth(A+B) - additive
    predicted GI = m_pred(A+B)  - additive

The floor at 0 is that of log1p expression, below which no cell, measured or predicted, can go
(metrics refuse AnnData with negative values; inputs with negative values get no floor). Without
it, the sum of two strong repressions of a gene predicts negative expression, and the true
combination, stuck at 0, shows a "positive interaction" that is only the floor: on the 5 pairs of
the Norman subset whose singles were measured, that was 20-44% of the summed |GI| of the top-20
interaction genes, and the additive model (clipped at 0, as every prediction is) correlated at
r = 0.7 with such a GI while predicting no interaction at all. With the floor, the additive
expectation is exactly the additive model's prediction, so its GI is 0.

Both sides use the measured singles, as the field does: the reference is the additive model built
from the singles as measured, which is what a model must beat; in the protocol where pairs are
predicted (all singles seen in training) the singles are known; and a model's predictions of
its singles are not held-out predictions (they are not even in the prediction file).

Genes: the ``top`` genes with the strongest true interaction, by |moderated t| of the true GI
(its standard error that of the contrast ``m(A+B) - m(A) - m(B) + m(control)``, from the four
sets' variances, with SAM's ``s0`` as for DEGs, :mod:`mtpert.metrics.de`), so that a gene needs
an interaction larger than its noise, not merely a large noisy mean.

Two scores over those genes, for each predicted combination whose singles and control are in
the truth (NaN for single perturbations and where a part was not measured):

* ``pearson``: Pearson r of predicted vs true GI -- does the model know where the combination
  departs from additivity, and which way? A prediction of no interaction (the additive model
  itself) scores 0, no skill, rather than the undefined correlation with a constant, because it
  is the reference every model is compared with.
* ``mse``: mean squared error of predicted vs true GI. The additive expectation cancels, so this
  is the squared error of the combination's predicted mean on the genes where its interaction
  lies; the additive model scores the mean square of the true GI there, and a model below that
  predicts the interaction better than additivity does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from mtpert.metrics.de import by_strength, moderated_t
from mtpert.metrics.expression import pearson
from mtpert.metrics.inputs import Cells, Condition, load_sets

Measure = Literal["pearson", "mse"]
MEASURES: tuple[str, ...] = ("pearson", "mse")
N_GI_GENES = 20
"""Genes with the strongest true interaction that the scores are computed on."""
NO_INTERACTION = 1e-5
"""A predicted GI below this on every gene is no interaction: float32 rounding of predictions
reaches about 1e-6 of log-expression, one count in a hundred cells about 1e-2."""


def genetic_interaction(
    truths: Mapping[Condition, Cells],
    preds: Mapping[Condition, Cells],
    *,
    control: Cells | None,
    measure: Measure,
    top: int = N_GI_GENES,
) -> dict[Condition, float]:
    """Agreement of the predicted with the true genetic interaction of each predicted combination.

    Args:
        truths: real cells of every condition of one group, among them the combinations'
            singles (a single is the condition with ``parts == (part,)`` at the same dose).
        preds: predicted cells; keys with fewer than two parts score NaN.
        control: the group's control cells; every score is NaN without them.
        measure: ``"pearson"`` or ``"mse"`` of predicted vs true GI (see the module docstring).
        top: genes with the strongest true interaction to score on.

    Returns:
        The score of each key of ``preds``.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}.")
    scores = dict.fromkeys(preds, float("nan"))
    singles = {(key.parts, key.dose): key for key in truths}
    parts_of = {
        key: [singles.get(((part,), key.dose)) for part in key.parts]
        for key in preds
        if len(key.parts) > 1 and key in truths
    }
    parts_of = {key: parts for key, parts in parts_of.items() if None not in parts}
    if control is None or not parts_of:
        return scores
    used = dict.fromkeys(k for key, parts in parts_of.items() for k in (key, *parts))
    sets = {"control": control} | {f"truth {k.label()}": truths[k] for k in used}
    sets |= {f"prediction {k.label()}": preds[k] for k in parts_of}
    _, data = load_sets(sets)
    control_cells = data["control"]
    floor = 0.0 if all(X.min() >= 0 for X in data.values()) else -np.inf
    for key, parts in parts_of.items():
        measured = [data[f"truth {k.label()}"] for k in parts]
        summed = sum(cells.mean(0) - control_cells.mean(0) for cells in measured)
        additive = np.maximum(control_cells + summed, floor).mean(0)
        true_gi = data[f"truth {key.label()}"].mean(0) - additive
        pred_gi = data[f"prediction {key.label()}"].mean(0) - additive
        # standard error of the contrast combination - singles + (k - 1) * control
        terms = [
            (data[f"truth {key.label()}"], 1),
            (control_cells, len(parts) - 1),
            *((m, 1) for m in measured),
        ]
        se = np.sqrt(sum(w**2 * cells.var(0, ddof=1) / len(cells) for cells, w in terms))
        genes = by_strength(moderated_t(true_gi, se))[:top]
        if not len(genes):
            continue
        if measure == "pearson":
            no_interaction = np.all(np.abs(pred_gi[genes]) < NO_INTERACTION)
            scores[key] = 0.0 if no_interaction else float(pearson(pred_gi[genes], true_gi[genes]))
        else:
            scores[key] = float(np.mean((pred_gi[genes] - true_gi[genes]) ** 2))
    return scores
