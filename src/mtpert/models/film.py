"""Building blocks of the multi-task autoencoders: condition encoding and conditioned MLPs.

A condition (a set of perturbations, optionally with a dose) becomes a vector ``c``; a
:class:`ConditionedMLP` lets ``c`` steer its hidden layers by one of four mechanisms, chosen by a
parameter so they compare on equal terms (same widths, same training):

* ``film`` -- feature-wise linear modulation, ``gamma(c) * h + beta(c)`` after normalization;
* ``additive`` -- a condition-dependent bias only, ``h + beta(c)``;
* ``concat`` -- ``c`` concatenated to each block's input (the conditional-VAE way);
* ``multihead`` -- unconditioned hidden layers and one output layer per condition.

Normalization is LayerNorm, not BatchNorm: minibatches mix conditions and cell types, while a
prediction runs on the control cells of one cell type under one condition, so batch statistics
would differ between training and prediction (and leak information between the cells of a
batch). LayerNorm normalizes each cell on its own, identically in training and prediction.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

Conditioning = Literal["film", "additive", "concat", "multihead"]
CONDITIONINGS: tuple[str, ...] = get_args(Conditioning)


class ConditionEncoder(nn.Module):
    """Perturbation set (and dose) -> condition vector: a multi-hot code, then a learned dose embedding.

    A condition is the set of single perturbations it combines (a genetic screen's ``A+B`` is
    ``{A, B}``; a plain label, or control, is a set of one). Its code counts each known
    perturbation in the set, so a plain condition gets the one-hot code. Every mechanism of
    :class:`ConditionedMLP` reads ``c`` through a linear layer first, which on this code is the
    sum of one learned embedding per perturbation: a combination never seen together is encoded
    from its parts, and the nonlinearity after that layer lets the parts interact.

    Control is a perturbation of its own, so reconstructing a control cell uses the control code.
    With ``dose_dim > 0`` the (already scaled) dose passes through a small MLP whose output is
    appended to the code; being a smooth function of the dose, it can be asked for a dose that was
    never seen in training.
    """

    def __init__(self, n_perturbations: int, dose_dim: int = 0) -> None:
        super().__init__()
        self.n_perturbations = n_perturbations
        self.dose_dim = dose_dim
        self.dose = (
            nn.Sequential(nn.Linear(1, dose_dim), nn.SiLU(), nn.Linear(dose_dim, dose_dim))
            if dose_dim
            else None
        )

    @property
    def dim(self) -> int:
        """Length of the condition vector."""
        return self.n_perturbations + self.dose_dim

    def forward(self, code: Tensor, dose: Tensor | None = None) -> Tensor:
        """``code``: (n, n_perturbations) multi-hot set codes; ``dose``: (n,) scaled doses."""
        if self.dose is None:
            return code
        if dose is None:
            raise ValueError("This condition encoder embeds doses; pass a dose for every cell.")
        return torch.cat([code, self.dose(dose.unsqueeze(-1))], dim=-1)

    def embed_dose(self, dose: Tensor) -> Tensor:
        """The dose embedding alone (for mechanisms that take the perturbation from elsewhere)."""
        if self.dose is None:
            raise ValueError("This condition encoder has no dose embedding (dose_dim=0).")
        return self.dose(dose.unsqueeze(-1))


class FiLMGenerator(nn.Module):
    """Condition vector -> per-layer ``(gamma, beta)`` (``gamma`` is None for ``additive``).

    A small MLP, so the dose part of ``c`` can interact with the perturbation part. Its last layer
    starts at zero: every block begins unmodulated (``gamma = 1``, ``beta = 0``) and the network
    learns how much each condition should move it.
    """

    def __init__(
        self, cond_dim: int, widths: Sequence[int], *, scale: bool, hidden: int = 64
    ) -> None:
        super().__init__()
        self.widths = list(widths)
        self.scale = scale
        n_out = sum(self.widths) * (2 if scale else 1)
        self.net = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, n_out))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, c: Tensor) -> list[tuple[Tensor | None, Tensor]]:
        out = self.net(c)
        if self.scale:
            gammas, betas = out.split(sum(self.widths), dim=-1)
            gammas = [1.0 + g for g in gammas.split(self.widths, dim=-1)]
        else:
            betas, gammas = out, [None] * len(self.widths)
        return list(zip(gammas, betas.split(self.widths, dim=-1), strict=True))


class Block(nn.Module):
    """Linear -> LayerNorm -> (gamma, beta) modulation -> SiLU -> dropout; ``concat`` widens the input."""

    def __init__(self, n_in: int, n_out: int, *, concat_dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in + concat_dim, n_out)
        self.norm = nn.LayerNorm(n_out)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        h: Tensor,
        c: Tensor | None = None,
        gamma: Tensor | None = None,
        beta: Tensor | None = None,
    ) -> Tensor:
        if c is not None:
            h = torch.cat([h, c], dim=-1)
        h = self.norm(self.linear(h))
        if gamma is not None:
            h = h * gamma
        if beta is not None:
            h = h + beta
        return self.dropout(self.act(h))


class ConditionedMLP(nn.Module):
    """Blocks of ``hidden`` widths steered by a condition vector, then a linear output layer.

    The condition steers the output layer too (modulated, or fed ``c``), so each condition can
    move each output (gene) on its own: a uniform shift per condition, the mean-shift baseline,
    is one setting of the weights, and the hidden layers learn how the response depends on the
    cell's state.

    Args:
        n_in, n_out: input and output widths.
        hidden: widths of the hidden blocks.
        conditioning: how ``c`` enters the hidden blocks (``film``, ``additive`` or ``concat``), or
            None for an unconditioned network.
        cond_dim: length of ``c``.
        n_heads: number of output layers; above 1, ``forward`` needs ``head`` to pick each cell's
            layer (the ``multihead`` mechanism).
        dropout: dropout after each hidden block.
        input_dropout: dropout on the input (denoising: the network must fill in masked genes).
    """

    def __init__(
        self,
        n_in: int,
        hidden: Sequence[int],
        n_out: int,
        *,
        conditioning: Conditioning | None = None,
        cond_dim: int = 0,
        n_heads: int = 1,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if conditioning == "multihead":
            raise ValueError("multihead is built with n_heads, not as a hidden-block conditioning.")
        if conditioning is not None and cond_dim < 1:
            raise ValueError(f"conditioning={conditioning!r} needs cond_dim >= 1.")
        self.conditioning = conditioning
        self.input_dropout = nn.Dropout(input_dropout)
        widths = [n_in, *hidden]
        concat_dim = cond_dim if conditioning == "concat" else 0
        self.blocks = nn.ModuleList(
            Block(a, b, concat_dim=concat_dim, dropout=dropout)
            for a, b in itertools.pairwise(widths)
        )
        self.film = (
            FiLMGenerator(cond_dim, [*hidden, n_out], scale=conditioning == "film")
            if conditioning in ("film", "additive")
            else None
        )
        self.heads = nn.ModuleList(
            nn.Linear(widths[-1] + concat_dim, n_out) for _ in range(n_heads)
        )

    def forward(self, x: Tensor, c: Tensor | None = None, head: Tensor | None = None) -> Tensor:
        if self.conditioning is not None and c is None:
            raise ValueError(
                f"This network is conditioned ({self.conditioning}); pass the condition vector c."
            )
        h = self.input_dropout(x)
        params = self.film(c) if self.film is not None else [(None, None)] * (len(self.blocks) + 1)
        concat = c if self.conditioning == "concat" else None
        for block, (gamma, beta) in zip(self.blocks, params[:-1], strict=True):
            h = block(h, concat, gamma, beta)
        if concat is not None:
            h = torch.cat([h, concat], dim=-1)
        out = self._heads(h, head)
        gamma, beta = params[-1]
        if gamma is not None:
            out = out * gamma
        return out if beta is None else out + beta

    def _heads(self, h: Tensor, head: Tensor | None) -> Tensor:
        if len(self.heads) == 1:
            return self.heads[0](h)
        if head is None:
            raise ValueError(
                f"This network has {len(self.heads)} output heads; pass head= for every cell."
            )
        out = h.new_empty(h.shape[0], self.heads[0].out_features)
        for k in head.unique().tolist():
            rows = head == k
            out[rows] = self.heads[k](h[rows])
        return out
