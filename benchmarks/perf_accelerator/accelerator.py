"""The performance issue's targets 1 and 2 on a GPU, when this machine has one.

Run: python benchmarks/perf_accelerator/accelerator.py [--models mtae,mtvae] [--cells 100000]

Without CUDA it prints that it skipped and exits 0, recording nothing. With CUDA, every model's
``device="auto"`` picks the GPU, and the script runs

1. the Kang fold of ``kang_fold.py`` (CD4 Naive T held out, seed 1; needs the shared Kang file)
   for ``--models``, each in float32 and again in bfloat16 mixed precision: train and predict
   seconds, epochs, R² top-100 (pertpy's scGen is not run here: compare with the CPU run's
   ``perf_kang_fold.md``);
2. one epoch of ``mtae`` over ``--cells`` simulated cells x 2,000 genes, in memory and backed,
   through ``scaling.py`` (results ``perf_accelerator_scaling.{md,csv,png}``).

Writes benchmarks/perf_accelerator/perf_accelerator.{md,csv} (the fold) with the device's name.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import RESULTS, provenance

NAME = "perf_accelerator"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=lambda s: s.split(","), default=["mtae", "mtvae"])
    parser.add_argument("--cells", type=int, default=100_000, help="cells of the one-epoch job")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA device here (torch.cuda.is_available() is False); nothing recorded.")
        return
    import kang_fold

    from mtpert.io import atomic_write, write_table

    start = time.perf_counter()
    device = torch.cuda.get_device_name(0)
    fold = argparse.Namespace(
        models=args.models, bfloat16=args.models, threads=1, pertpy_python=None, scbutterfly_python=None,
        scbutterfly_script=None, peer_timeout=0,
    )  # fmt: skip
    table = kang_fold.run(fold).assign(device=device)
    write_table(table, RESULTS / f"{NAME}.csv")
    jobs = f"mtae@{args.cells},mtae@{args.cells}:backed"
    scaling = [sys.executable, str(HERE / "scaling.py"), "--jobs", jobs, "--eval-sizes", "", "--name", f"{NAME}_scaling"]
    subprocess.run(scaling, check=True)
    text = (
        "# Targets 1 and 2 on a GPU\n\n"
        + provenance("python " + " ".join(sys.argv), time.perf_counter() - start)
        + f"- device: {device}; full precision; the Kang fold of `kang_fold.py`, each model in a fresh process\n"
        + f"- one-epoch throughput: `{NAME}_scaling.md`\n\n"
        + table.to_markdown(index=False, floatfmt=".3g")
        + "\n"
    )
    atomic_write(RESULTS / f"{NAME}.md", lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
