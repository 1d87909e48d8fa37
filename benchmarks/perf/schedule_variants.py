"""Epochs to convergence and accuracy of `mtae` under other training schedules, on the Kang fold
of kang_fold.py (CD4 Naive T held out, seed 1): could a shorter schedule buy the 5x target?

Run (from the repository root, one pinned core):
    taskset -c 1 python benchmarks/perf/schedule_variants.py
Epochs and R² do not depend on the machine's load; seconds do. Writes
benchmarks/results/perf_schedule_variants.{csv,md}.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import RESULTS, load_kang, provenance

from mtpert.benchmark import fit_and_score, make_fold
from mtpert.data import DatasetSpec
from mtpert.io import atomic_write, write_table

GROUP, SEED = "CD4 Naive T", 1
VARIANTS = {
    "default (lr 1e-3, patience 15, batch 128)": {},
    "patience 8": {"patience": 8},
    "patience 8, lr 2e-3": {"lr": 2e-3, "patience": 8},
    "patience 6, lr 3e-3, 2 warm-up epochs": {"lr": 3e-3, "patience": 6, "warmup_epochs": 2},
    "batch 256, lr 2e-3": {"batch_size": 256, "lr": 2e-3},
    "batch 512, lr 3e-3": {"batch_size": 512, "lr": 3e-3},
}


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    spec = DatasetSpec()
    raw = load_kang()
    fold = make_fold(raw, spec, GROUP, seed=SEED)
    data, split = fold.data, fold.split
    rows = []
    for name, params in VARIANTS.items():
        params = {"num_threads": 1, "progress": False, **params}
        result = fit_and_score(data, split, spec, "mtae", SEED, params)
        scores = result.scores.set_index("metric")["value"]
        rows.append({
            "schedule": name, "epochs": len(result.models[None].history),
            "train_seconds": result.fit_seconds, "r2_top100": scores["r2_top100"], "r2_all": scores["r2_all"],
        })  # fmt: skip
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    write_table(table, RESULTS / "perf_schedule_variants.csv")
    text = (
        "# `mtae` on the Kang fold under other training schedules\n\n"
        + provenance("taskset -c 1 python benchmarks/perf/schedule_variants.py", time.perf_counter() - start)
        + f"\nFold: {GROUP} held out, seed {SEED}, as in `perf_kang_fold.md`; one torch thread.\n\n"
        + table.to_markdown(index=False, floatfmt=".4g")
        + "\n"
    )
    atomic_write(RESULTS / "perf_schedule_variants.md", lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
