"""A small, readable training loop: AdamW, warm-up, plateau or cosine decay, early stopping, clipping,
optional bfloat16 autocast.

With ``progress``, each finished epoch is reported: on a terminal (or in a notebook) by a
progress bar, elsewhere (output to a file or a pipe, a worker process) as an INFO record of the
``mtpert.train`` logger, which says nothing until the application configures logging.

The loop knows nothing about autoencoders. It trains any module that follows :class:`Trainable`:
``losses(batch)`` returns the weighted loss terms of one minibatch (their sum is minimized), and
the validation sum of its ``monitored`` terms decides early stopping and learning-rate decay
(after early stopping the weights of the best epoch are restored). A module with a
``discriminator`` gets alternating steps: ``disc_steps`` discriminator steps on each minibatch,
then one step of everything else against the updated discriminator.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Literal, Protocol, get_args

import pandas as pd
import torch
from rich import get_console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn

from mtpert.errors import ConfigError
from mtpert.train.data import Batch, CellData

Schedule = Literal["plateau", "cosine"]
Precision = Literal["float32", "bfloat16"]

DISC = "disc"
"""History name of the discriminator's loss."""

MIN_RELATIVE_IMPROVEMENT = 1e-4
"""A validation loss must fall by this fraction of the best so far to reset early stopping."""

logger = logging.getLogger(__name__)

_EPOCH_LISTENERS: ContextVar[tuple[Callable[[int, int], None], ...]] = ContextVar("epoch_listeners", default=())


@contextmanager
def on_epoch(listener: Callable[[int, int], None]) -> Iterator[None]:
    """Call ``listener(epoch, max_epochs)`` after each epoch of every :func:`train` in the block,
    whether or not progress is shown (a benchmark's live view of its running fits uses it)."""
    token = _EPOCH_LISTENERS.set((*_EPOCH_LISTENERS.get(), listener))
    try:
        yield
    finally:
        _EPOCH_LISTENERS.reset(token)


class Trainable(Protocol):
    """What :func:`train` needs from a module (besides being an ``nn.Module``)."""

    monitored: tuple[str, ...]
    """Loss terms whose sum decides early stopping (adversarial terms, which rise whenever the
    discriminator improves, are better left out)."""
    discriminator: nn.Module | None

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """Weighted loss terms of one minibatch, each a scalar."""
        ...

    def discriminator_input(self, batch: Batch) -> Tensor:
        """What the discriminator looks at in one minibatch (computed once, without gradient)."""
        ...

    def discriminator_loss(self, inputs: Tensor, batch: Batch) -> Tensor:
        """Loss of the discriminator alone on ``inputs`` (only called if there is one)."""
        ...


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings: what a trained model's results depend on, besides its network.

    Attributes:
        lr: peak AdamW learning rate (also the discriminator's).
        weight_decay: AdamW weight decay.
        batch_size: cells per minibatch.
        max_epochs: upper bound on passes over the training cells (raised to reach
            ``min_steps``).
        min_steps: the least optimizer steps a training plans for: on data too small for
            ``max_epochs`` passes to reach it, the epochs are raised until they do (30 epochs of
            320 cells are 90 steps, too few for a network to fit). 0: ``max_epochs`` as given.
        patience: epochs without a validation improvement before stopping.
        warmup_epochs: epochs of linear learning-rate warm-up from ~0 to ``lr``.
        schedule: the learning rate after warm-up. ``plateau``: ``lr``, halved after
            ``patience // 3`` epochs without improvement (ReduceLROnPlateau). ``cosine``: from
            ``lr`` down to 0 along a half cosine that ends with epoch ``max_epochs`` (Loshchilov &
            Hutter 2017), so ``max_epochs`` is the budget the schedule is planned for; a higher
            ``lr`` then gets close in fewer epochs than a constant one, and the decay settles it.
        precision: ``float32``, or ``bfloat16``: forward passes under autocast (matrix products in
            bfloat16; weights, gradients and optimizer state stay float32), faster on GPUs and on
            CPUs with bfloat16 instructions (AVX512-BF16, AMX), slower elsewhere. Predictions are
            made in float32 either way.
        grad_clip: maximum gradient norm.
        disc_steps: discriminator steps per minibatch, before the step of everything else; several
            keep the discriminator near its best, so the encoder must remove what it reads rather
            than dodge a lagging discriminator.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    max_epochs: int = 100
    min_steps: int = 0
    patience: int = 15
    warmup_epochs: int = 5
    schedule: Schedule = "plateau"
    precision: Precision = "float32"
    grad_clip: float = 1.0
    disc_steps: int = 5

    def __post_init__(self) -> None:
        """Refuse a setting of the wrong type or out of its range here, when the model is made,
        rather than as a failure deep inside training (``max_epochs=0`` would train nothing)."""
        problems = [_number_problem(k, getattr(self, k), positive=True) for k in _POSITIVE]
        problems += [_number_problem(k, getattr(self, k), positive=False) for k in _NON_NEGATIVE]
        problems += [
            f"{k} must be one of {list(get_args(allowed))}, got {getattr(self, k)!r}"
            for k, allowed in (("schedule", Schedule), ("precision", Precision))
            if getattr(self, k) not in get_args(allowed)
        ]
        found = [p for p in problems if p is not None]
        if found:
            raise ConfigError(
                f"Bad training settings: {'; '.join(found)}. Give each a value in its range."
            )


_POSITIVE = ("lr", "batch_size", "max_epochs", "patience", "grad_clip", "disc_steps")
_NON_NEGATIVE = ("warmup_epochs", "weight_decay", "min_steps")
_WHOLE = frozenset(
    {"batch_size", "max_epochs", "min_steps", "patience", "warmup_epochs", "disc_steps"}
)
"""The :class:`TrainConfig` settings that count (cells, epochs, steps): integers."""


def planned_epochs(config: TrainConfig, n_cells: int) -> int:
    """The epochs a training on ``n_cells`` plans for: ``max_epochs``, raised where fewer would
    not reach ``min_steps`` minibatches."""
    steps_per_epoch = max(1, math.ceil(n_cells / config.batch_size))
    return max(config.max_epochs, math.ceil(config.min_steps / steps_per_epoch))


def _number_problem(name: str, value: object, *, positive: bool) -> str | None:
    """What is wrong with training setting ``name`` = ``value``, or None: a counting setting
    (:data:`_WHOLE`) must be an integer, any other a number; each above 0 (``positive``) or at
    least 0. NaN fails every comparison, so it is refused too (infinity is not: an infinite
    ``grad_clip`` clips nothing)."""
    whole = name in _WHOLE
    kind = numbers.Integral if whole else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        return f"{name} must be {'an integer' if whole else 'a number'}, got {value!r}"
    if value > 0 if positive else value >= 0:
        return None
    return f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}"


def train(
    module: nn.Module,
    data: CellData,
    val: CellData | None,
    config: TrainConfig,
    *,
    device: torch.device,
    generator: torch.Generator,
    progress: bool = True,
) -> pd.DataFrame:
    """Train ``module`` (a :class:`Trainable`) in place and restore its best weights.

    Early stopping and learning-rate decay watch the validation loss, or the training loss when
    ``val`` is None or empty. ``generator`` orders the minibatches. ``progress``: report each
    epoch (a bar on a terminal, else a log record; see the module docstring).

    Returns:
        The history: one row per epoch with ``epoch``, ``lr`` and ``train_<term>`` /
        ``val_<term>`` columns (``disc``: the discriminator's loss).
    """
    trainable: Trainable = module  # type: ignore[assignment]
    val = val if val is not None and len(val) else None
    module.to(device)
    disc = trainable.discriminator
    disc_params = list(disc.parameters()) if disc is not None else []
    disc_ids = {id(p) for p in disc_params}
    params = [p for p in module.parameters() if id(p) not in disc_ids]
    opt = _adamw(params, config, device)
    disc_opt = _adamw(disc_params, config, device) if disc is not None else None
    plateau = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(1, config.patience // 3))
        if config.schedule == "plateau"
        else None
    )
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    epochs = planned_epochs(config, len(data))
    warmup_steps, total_steps = config.warmup_epochs * steps_per_epoch, epochs * steps_per_epoch

    rows: list[dict[str, float]] = []
    best, best_state, stale, step = math.inf, {}, 0, 0
    with _epoch_reporter(epochs, progress) as report:
        for epoch in range(1, epochs + 1):
            module.train()
            sums: defaultdict[str, float] = defaultdict(float)
            for batch in data.batches(config.batch_size, device=device, generator=generator):
                step += 1
                if step <= warmup_steps or config.schedule == "cosine":
                    for group in (*opt.param_groups, *(disc_opt.param_groups if disc_opt else ())):
                        group["lr"] = _scheduled_lr(config, step, warmup_steps, total_steps)
                if disc_opt is not None:
                    with torch.no_grad(), _autocast(config, device):
                        inputs = trainable.discriminator_input(batch)
                    for _ in range(config.disc_steps):
                        with _autocast(config, device):
                            disc_loss = trainable.discriminator_loss(inputs, batch)
                        _step(disc_opt, disc_loss, disc_params, config.grad_clip)
                    sums[DISC] += disc_loss.item() * len(batch)
                with _autocast(config, device):
                    terms = trainable.losses(batch)
                _step(opt, sum(terms.values()), params, config.grad_clip)  # type: ignore[arg-type]
                for name, value in terms.items():
                    sums[name] += value.item() * len(batch)
            means = {"train": {k: v / len(data) for k, v in sums.items()}}
            if val is not None:
                with _autocast(config, device):
                    means["val"] = evaluate(module, val, config.batch_size, device)
            rows.append(
                {"epoch": float(epoch), "lr": opt.param_groups[0]["lr"]}
                | {f"{split}_{k}": v for split, values in means.items() for k, v in values.items()}
            )
            prefix = "val" if val is not None else "train"
            monitor = sum(means[prefix].get(k, 0.0) for k in trainable.monitored)
            if plateau is not None and step > warmup_steps:
                plateau.step(monitor)
            if best == math.inf or monitor < best - MIN_RELATIVE_IMPROVEMENT * abs(best):
                best, best_state, stale = monitor, _state(module), 0
            else:
                stale += 1
            report(epoch, f"{prefix} loss {monitor:.4f} (best {best:.4f})")
            for listener in _EPOCH_LISTENERS.get():
                listener(epoch, epochs)
            if stale >= config.patience:
                break
    module.load_state_dict(best_state)
    module.eval()
    return pd.DataFrame(rows)


@torch.no_grad()
def evaluate(
    module: nn.Module, data: CellData, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Mean loss terms (and discriminator loss, if any) over ``data`` in evaluation mode."""
    trainable: Trainable = module  # type: ignore[assignment]
    module.eval()
    sums: defaultdict[str, float] = defaultdict(float)
    for batch in data.batches(batch_size, device=device):
        for name, value in trainable.losses(batch).items():
            sums[name] += value.item() * len(batch)
        if trainable.discriminator is not None:
            inputs = trainable.discriminator_input(batch)
            sums[DISC] += trainable.discriminator_loss(inputs, batch).item() * len(batch)
    return {k: v / len(data) for k, v in sums.items()}


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (None: as set), then restore the setting."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _autocast(config: TrainConfig, device: torch.device) -> torch.autocast:
    """The block under bfloat16 autocast where ``config.precision`` asks for it."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16")


def _scheduled_lr(config: TrainConfig, step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (from 1) in warm-up, or after it under the
    cosine schedule (the plateau schedule's decay is ReduceLROnPlateau's)."""
    if step <= warmup_steps:
        return config.lr * step / warmup_steps
    done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))


def _adamw(params: list[Tensor], config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step on CPU and CUDA: on CPU the per-parameter loop of
    the default implementation took a fifth of each training step (see
    benchmarks/perf_kang_fold/NOTES.md)."""
    fused = device.type in ("cpu", "cuda") or None
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def _step(opt: torch.optim.Optimizer, loss: Tensor, params: list[Tensor], clip: float) -> None:
    """One optimizer step; a loss without gradient (e.g. no paired cells in the batch) is skipped."""
    if not loss.requires_grad:
        return
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, clip)
    opt.step()


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@contextmanager
def _epoch_reporter(max_epochs: int, show: bool) -> Iterator[Callable[[int, str], None]]:
    """``report(epoch, status)`` for each finished epoch: a transient progress bar where the
    console is a terminal (or a notebook with ipywidgets), an INFO log record otherwise; nothing
    unless ``show``."""
    console = get_console()
    if not show:
        yield lambda epoch, status: None
    elif console.is_terminal or (console.is_jupyter and find_spec("ipywidgets") is not None):  # rich draws there
        columns = (TextColumn("epoch"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[status]}"))
        with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("training", total=max_epochs, status="")
            yield lambda epoch, status: bar.update(task, completed=epoch, status=status)
    else:
        yield lambda epoch, status: logger.info("epoch %d/%d: %s", epoch, max_epochs, status)


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; CUDA asked for but absent is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} but CUDA is not available; use device='auto' or 'cpu'."
        )
    return resolved
