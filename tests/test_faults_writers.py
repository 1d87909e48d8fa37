"""Writers under stress (issue 30): two processes at once, a full disk, dangling links.

``fit``, ``predict``, ``tune`` and ``benchmark`` hold a lock on their output, so a second process
is refused naming the first; a full disk is a one-line error and leaves what was there whole; a
running tuning trial is only failed when its process is gone.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
from typer.testing import CliRunner

from mtpert import io as io_module
from mtpert.benchmark import BenchmarkConfig, run_benchmark
from mtpert.benchmark.store import ResultStore
from mtpert.cli import app
from mtpert.data import DatasetSpec, prepare, simulate
from mtpert.errors import DiskFullError
from mtpert.io import TEMP_PREFIX
from mtpert.lock import LOCK_NAME, OutputInUseError, output_lock

runner = CliRunner(env={"COLUMNS": "200"})

HOLDER = """
import sys
from contextlib import ExitStack
from mtpert.lock import output_lock

with ExitStack() as stack:
    for path in sys.argv[1:]:
        stack.enter_context(output_lock(path, file=path.endswith(".h5ad")))
    print("held", flush=True)
    sys.stdin.read()  # until the test closes it
"""
"""A second process holding the lock of each output named on its command line."""


def cli(*args: str):
    """``mtpert ARGS`` in-process; a Python traceback in its output is a failure in itself."""
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def said(result) -> str:
    """What a command printed, its lines joined (a long message is wrapped)."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "cells.h5ad"
    simulate(n_genes=60, n_cells=30, seed=5).write_h5ad(path)
    return str(path)


@pytest.fixture(scope="module")
def model_dir(data_file, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("models") / "mean_shift")
    assert (
        cli("fit", data_file, "--model", "mean_shift", "--out", out, "--n-hvg", "0").exit_code == 0
    )
    return out


def fit_args(data_file: str, out: Path, *extra: str) -> list[str]:
    return ["fit", data_file, "--model", "mean_shift", "--out", str(out), "--n-hvg", "0", *extra]


def predict_args(model_dir: str, data_file: str, out: Path, *extra: str) -> list[str]:
    return [
        "predict",
        model_dir,
        data_file,
        "--group",
        "type_0",
        "--condition",
        "stimulated",
        "--out",
        str(out),
        *extra,
    ]


def tune_args(data_file: str, out: Path) -> list[str]:
    options = "--model linear --trials 1 --n-hvg 0"
    return ["tune", data_file, "--out", str(out), *options.split()]


def benchmark_args(data_file: str, out: Path) -> list[str]:
    options = "--models control,mean_shift --seeds 1 --n-hvg 0 --no-report"
    return ["benchmark", "--data", data_file, "--out", str(out), *options.split()]


def command(name: str, data_file: str, model_dir: str, out: Path) -> list[str]:
    """The arguments of ``mtpert NAME`` writing to ``out``."""
    return {
        "fit": lambda: fit_args(data_file, out),
        "predict": lambda: predict_args(model_dir, data_file, out),
        "tune": lambda: tune_args(data_file, out),
        "benchmark": lambda: benchmark_args(data_file, out),
    }[name]()


def output_of(name: str, folder: Path) -> Path:
    return folder / ("pred.h5ad" if name == "predict" else name)


@pytest.fixture
def holder(tmp_path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start a process holding the locks of the given outputs; it is stopped at the end."""
    started: list[subprocess.Popen] = []

    def hold(*outputs: Path) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, *map(str, outputs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield hold
    for process in started:
        process.stdin.close()
        process.wait(timeout=30)


# ============================================================================ one writer per output
@pytest.mark.parametrize("name", ["fit", "predict", "tune", "benchmark"])
def test_a_second_process_writing_the_same_output_is_refused_naming_the_first(
    name, data_file, model_dir, tmp_path, holder
) -> None:
    out = output_of(name, tmp_path)
    first = holder(out)
    result = cli(*command(name, data_file, model_dir, out))
    assert result.exit_code == 2, result.output
    assert f"{out} is in use by PID {first.pid} on {socket.gethostname()} (started " in said(result)
    assert "wait for it or choose another --out" in said(result)
    if name == "predict":
        assert not out.exists()
    else:
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # the refused command wrote nothing


def test_the_library_benchmark_is_refused_while_another_process_holds_its_folder(
    data_file, tmp_path, holder
) -> None:
    out = tmp_path / "bench"
    first = holder(out)
    config = BenchmarkConfig(
        data=data_file, models=("control",), seeds=(1,), n_hvg=0, noise_ceiling_repeats=0
    )
    with pytest.raises(OutputInUseError, match=f"in use by PID {first.pid}"):
        run_benchmark(config, out)


def test_outputs_are_released_and_their_lock_files_removed(data_file, model_dir, tmp_path) -> None:
    model = tmp_path / "model"
    assert cli(*fit_args(data_file, model)).exit_code == 0
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "fit.json", "weights.pt"]
    assert cli(*predict_args(model_dir, data_file, tmp_path / "pred.h5ad")).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "pred.h5ad"]


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_note(
    tmp_path, holder, caplog
) -> None:
    out = tmp_path / "out"
    killed = holder(out)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert (out / LOCK_NAME).is_file()  # what a killed process leaves
    with caplog.at_level(logging.WARNING, logger="mtpert"), output_lock(out):
        assert f"left locked by PID {killed.pid} on {socket.gethostname()}" in caplog.text
    assert not (out / LOCK_NAME).exists()


def test_a_lock_recorded_by_another_host_is_not_taken_over(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(
        '{"pid": 4242, "host": "elsewhere", "started": "2026-01-01T00:00:00+00:00"}'
    )
    with (
        pytest.raises(
            OutputInUseError, match=r"PID 4242 on elsewhere .*remove .*\.lock if it has ended"
        ),
        output_lock(out),
    ):
        pass
    assert (out / LOCK_NAME).read_text().startswith('{"pid": 4242')


# ============================================================================ a full disk
class FullFile(io.FileIO):
    """A file whose disk fills up after ``room`` bytes: the rest of a write is refused, as a
    full disk refuses it (``ENOSPC``), after part of it reached the file."""

    room = 100

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            super().write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return super().write(data)


@pytest.fixture
def full_disk(monkeypatch) -> Callable[[Callable[[Path], bool]], None]:
    """Make the disk full for the files mtpert's atomic writers open whose final name passes
    ``when`` (the temporary file's name starts with the final one's)."""

    def fill(when: Callable[[Path], bool]) -> None:
        def open_(file, mode="r", *args, **kwargs):
            final = Path(file).name.removeprefix(TEMP_PREFIX).rsplit(".", 1)[0]
            if "w" in mode and when(Path(file).with_name(final)):
                return FullFile(file, mode)
            return open(file, mode, *args, **kwargs)

        monkeypatch.setattr(io_module, "open", open_, raising=False)

    return fill


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()
    }


def test_fit_on_a_full_disk_is_a_clear_error_and_leaves_no_model_folder(
    data_file, tmp_path, full_disk
) -> None:
    full_disk(lambda path: path.name == "weights.pt")
    out = tmp_path / "model"
    result = cli(*fit_args(data_file, out))
    assert result.exit_code == 2, result.output
    assert f"No space left on device while writing {out / 'weights.pt'}" in said(result)
    assert not out.exists()


def test_fit_force_on_a_full_disk_keeps_the_model_that_was_there_whole(
    data_file, tmp_path, full_disk
) -> None:
    out = tmp_path / "model"
    assert cli(*fit_args(data_file, out)).exit_code == 0
    before = snapshot(out)
    full_disk(
        lambda path: path.name == "config.json"
    )  # weights.pt is written first: it must not replace the old
    result = cli(*fit_args(data_file, out, "--seed", "2", "--force"))
    assert result.exit_code == 2 and "No space left on device while writing" in said(result)
    assert snapshot(out) == before


def test_predict_on_a_full_disk_is_a_clear_error_and_writes_nothing(
    data_file, model_dir, tmp_path, monkeypatch
) -> None:
    def write_h5ad(
        self, filename, **kwargs
    ) -> None:  # h5py's error on a full disk, after writing part
        Path(filename).write_bytes(b"\x89HDF\r\n")
        raise OSError(
            errno.ENOSPC,
            "Can't synchronously write data (file write failed: errno = 28, error message = 'No space left on device')",
        )

    monkeypatch.setattr(ad.AnnData, "write_h5ad", write_h5ad)
    out = tmp_path / "pred.h5ad"
    result = cli(*predict_args(model_dir, data_file, out))
    assert result.exit_code == 2, result.output
    assert f"No space left on device while writing {out}" in said(result)
    assert list(tmp_path.iterdir()) == []


def test_a_benchmark_on_a_full_disk_is_a_clear_error_and_its_finished_runs_stay_whole(
    data_file, tmp_path, monkeypatch
) -> None:
    pytest.importorskip("pyarrow", reason="run tables are parquet files with pyarrow")
    written: list[Path] = []
    to_parquet = pd.DataFrame.to_parquet

    def second_run_fills_the_disk(
        self, path, **kwargs
    ) -> None:  # as pyarrow fails, after writing part
        written.append(Path(path))
        if len(written) == 2:
            Path(path).write_bytes(b"PAR1")
            raise OSError(
                errno.ENOSPC,
                "Error writing bytes to file. Detail: [errno 28] No space left on device",
            )
        to_parquet(self, path, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", second_run_fills_the_disk)
    out = tmp_path / "bench"
    result = cli(*benchmark_args(data_file, out))
    assert result.exit_code == 2, result.output
    second = out / "runs" / written[1].name.removeprefix(TEMP_PREFIX).rsplit(".", 1)[0]
    assert f"No space left on device while writing {second}" in said(result)
    finished = ResultStore(out).results()
    assert len(set(finished["run_id"])) == 1 and second.stem not in set(finished["run_id"])
    assert not [p for p in out.rglob(f"{TEMP_PREFIX}*")]


def torch_like(f) -> None:
    """torch re-raises a refused write as its own RuntimeError, caused by the OSError."""
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError(
            "PytorchStreamWriter failed writing file data/0: file write failed"
        ) from None


def hdf5_like(f) -> None:
    """h5py reports HDF5's failed write as a RuntimeError with the C errno in its text (as seen
    on a full tmpfs)."""
    raise RuntimeError(
        "Disable slist on flush dest failure failed (file write failed: file descriptor = 4, errno = 28, "
        "error message = 'No space left on device', total write size = 2371)"
    )


def dev_full(f) -> None:
    """A real refused write: Linux's /dev/full answers every write with ENOSPC."""
    with open("/dev/full", "wb") as full:
        full.write(b"x")


@pytest.mark.parametrize("write", [torch_like, hdf5_like, dev_full])
def test_a_full_disk_is_found_behind_a_writers_own_error(write, tmp_path) -> None:
    if write is dev_full and not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with pytest.raises(
        DiskFullError,
        match=f"No space left on device while writing {tmp_path / 'out.bin'}; free some space",
    ):
        io_module.atomic_write(tmp_path / "out.bin", write)
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_are_not_called_a_full_disk(tmp_path) -> None:
    def broken(f) -> None:
        raise RuntimeError("errno = 2, error message = 'No such file or directory'")

    with pytest.raises(RuntimeError, match="No such file"):
        io_module.atomic_write(tmp_path / "out.bin", broken)


# ============================================================================ running tuning trials
def test_a_running_trial_is_failed_only_when_its_process_is_gone(tmp_path, caplog) -> None:
    optuna = pytest.importorskip("optuna")
    from mtpert import tuning

    data = prepare(simulate(n_genes=40, n_cells=30, seed=3), DatasetSpec(), n_hvg=0)
    journal = tmp_path / "study.journal"
    storage = tuning._storage(optuna, journal)
    study = optuna.create_study(study_name="mtpert:linear", storage=storage, direction="maximize")
    gone = subprocess.Popen(["true"])
    gone.wait()  # its PID is free now
    with subprocess.Popen(["sleep", "60"]) as alive:  # another study's process, running its trial
        runners = {
            "alive": {"host": socket.gethostname(), "pid": alive.pid},
            "gone": {"host": socket.gethostname(), "pid": gone.pid},
            "ours, interrupted": {"host": socket.gethostname(), "pid": os.getpid()},
            "elsewhere": {"host": "another-host", "pid": 1},
        }
        numbers = {}
        for name, runner_ in runners.items():
            trial = study.ask()
            trial.set_user_attr(tuning.RUNNER, runner_)
            numbers[name] = trial.number
        with caplog.at_level(logging.WARNING, logger="mtpert.tune"):
            settings = {"trials": 1, "inner_folds": 2}
            tuning.tune(data, DatasetSpec(), "linear", settings=settings, seed=1, storage=journal)
        alive.kill()
    trials = optuna.load_study(study_name="mtpert:linear", storage=storage).trials
    states = {name: trials[number].state.name for name, number in numbers.items()}
    assert states == {
        "alive": "RUNNING",
        "gone": "FAIL",
        "ours, interrupted": "FAIL",
        "elsewhere": "RUNNING",
    }
    assert "runs on another-host (PID 1)" in caplog.text and "left running" in caplog.text


# ============================================================================ dangling links, read-only folders
@pytest.mark.parametrize("name", ["fit", "predict", "tune", "benchmark"])
def test_an_out_that_is_a_dangling_symbolic_link_is_a_clear_error(
    name, data_file, model_dir, tmp_path
) -> None:
    out = output_of(name, tmp_path)
    target = tmp_path / "unmounted" / "disk"
    out.symlink_to(target)
    result = cli(*command(name, data_file, model_dir, out))
    assert result.exit_code == 2, result.output
    assert f"--out {out} is a symbolic link to {target}, which does not exist" in said(result)
    assert out.is_symlink() and not target.parent.exists()
