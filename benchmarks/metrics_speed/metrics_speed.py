"""Wall time of the whole evaluation suite for one target: 300 control, 300 true, 300 predicted cells.

Run: python benchmarks/metrics_speed/metrics_speed.py
Uses Kang CD14 Mono (2,000 HVGs chosen without its stimulated cells): 300 control cells, 300
stimulated cells, and the mean-shift prediction of those 300 control cells. Each timing builds a
fresh EvalPair, so nothing is cached between repeats. Writes benchmarks/metrics_speed/metrics_speed.md.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import RESULTS, load_kang, provenance

from mtpert.benchmark import make_fold
from mtpert.data import DatasetSpec
from mtpert.io import atomic_write
from mtpert.metrics import METRICS, evaluate
from mtpert.models import get_model

REPEATS = 5


def main() -> None:
    start_all = time.perf_counter()
    spec = DatasetSpec()
    raw = load_kang()
    fold = make_fold(raw, spec, "CD14 Mono", seed=1)
    data, split = fold.data, fold.split
    target = split.targets[0]
    rng = np.random.default_rng(0)
    control = data[rng.choice(target.control, 300, replace=False)]
    truth = data[rng.choice(target.truth, 300, replace=False)]
    pred = get_model("mean_shift")(spec).fit(split.subset(data, "train")).predict(control, target.condition)

    evaluate(control, truth, pred)  # warm-up: imports, BLAS threads
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        scores = evaluate(control, truth, pred)
        times.append(time.perf_counter() - start)
    seconds = time.perf_counter() - start_all
    text = (
        "# Evaluation suite speed\n\n"
        + provenance("python benchmarks/metrics_speed/metrics_speed.py", seconds)
        + f"\nAll {len(METRICS)} metrics ({len(scores)} rows, bootstrap R² with 100 resamples included) "
        f"for one target of 300 control + 300 true + 300 predicted cells x {data.n_vars} genes, "
        f"{os.cpu_count()} cores, fresh EvalPair each time:\n\n"
        f"- median {np.median(times):.3f} s, fastest {min(times):.3f} s, slowest {max(times):.3f} s "
        f"over {REPEATS} runs\n"
        "- target (performance issue): under 2 s\n"
    )
    atomic_write(RESULTS / "metrics_speed.md", lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
