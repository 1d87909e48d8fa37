"""Epochs to convergence and accuracy of `mtae` under other training schedules, on the Kang fold
of kang_fold.py (CD4 Naive T held out, seed 1): which schedule buys the 5x target?

Every variant states its settings in full, so the table does not depend on the current defaults:
the generic schedule (lr 1e-3 held until plateaus, the defaults of `mtae` before the cosine
schedule) with shorter patience or larger minibatches, and cosine schedules of several budgets
and peak rates (the current defaults are "cosine 30 epochs, lr 3e-3").

Run (from the repository root, one pinned core):
    taskset -c 1 python benchmarks/perf_kang_fold/schedule_variants.py
Epochs and R² do not depend on the machine's load; seconds do. Writes
benchmarks/perf_kang_fold/perf_schedule_variants.{csv,md}.
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
PLATEAU = {"schedule": "plateau", "lr": 1e-3, "max_epochs": 100}
VARIANTS = {
    "plateau, lr 1e-3, patience 15, batch 128 (the old defaults)": PLATEAU,
    "plateau, patience 8": PLATEAU | {"patience": 8},
    "plateau, patience 8, lr 2e-3": PLATEAU | {"lr": 2e-3, "patience": 8},
    "plateau, patience 6, lr 3e-3, 2 warm-up epochs": PLATEAU | {"lr": 3e-3, "patience": 6, "warmup_epochs": 2},
    "plateau, batch 256, lr 2e-3": PLATEAU | {"batch_size": 256, "lr": 2e-3},
    "plateau, batch 512, lr 3e-3": PLATEAU | {"batch_size": 512, "lr": 3e-3},
    "cosine 30 epochs, lr 1e-3": {"schedule": "cosine", "max_epochs": 30, "lr": 1e-3},
    "cosine 30 epochs, lr 3e-3 (the defaults)": {"schedule": "cosine", "max_epochs": 30, "lr": 3e-3},
    "cosine 20 epochs, lr 3e-3": {"schedule": "cosine", "max_epochs": 20, "lr": 3e-3},
    "cosine 40 epochs, lr 2e-3": {"schedule": "cosine", "max_epochs": 40, "lr": 2e-3},
    "cosine 30 epochs, lr 3e-3, batch 256": {"schedule": "cosine", "max_epochs": 30, "lr": 3e-3, "batch_size": 256},
    "cosine 30 epochs, lr 3e-3, bfloat16": {"schedule": "cosine", "max_epochs": 30, "lr": 3e-3, "precision": "bfloat16"},
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
            "e_distance_rel": scores["e_distance_rel"],
        })  # fmt: skip
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    write_table(table, RESULTS / "perf_schedule_variants.csv")
    text = (
        "# `mtae` on the Kang fold under other training schedules\n\n"
        + provenance("taskset -c 1 python benchmarks/perf_kang_fold/schedule_variants.py", time.perf_counter() - start)
        + f"\nFold: {GROUP} held out, seed {SEED}, as in `perf_kang_fold.md`; one torch thread.\n\n"
        + table.to_markdown(index=False, floatfmt=".4g")
        + "\n"
    )
    atomic_write(RESULTS / "perf_schedule_variants.md", lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
