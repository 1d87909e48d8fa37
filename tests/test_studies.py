"""The studies under benchmarks/: packed run stores that unpack to the same runs, study folders
that hold their command, configuration, summary and notes, and an index that is up to date."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from mtpert.benchmark.store import ResultStore
from mtpert.benchmark.studies import PACKED, RUNS_KEY, pack_runs, run_stores, unpack_runs
from mtpert.cli import app
from mtpert.errors import DataError
from mtpert.io import write_table
from mtpert.lock import OutputInUseError

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
STUDIES = sorted(p.parent for p in BENCHMARKS.glob("*/study.yaml"))


def run_table(run_id: str, metrics: tuple[str, ...], identity: bool, dose: float | None) -> pd.DataFrame:
    """A run file's table as the store writes it; ``identity=False``: one written before runs
    recorded ``run_slot`` and ``hparams``."""
    table = pd.DataFrame(
        {
            "run_id": run_id,
            "model": "mtae",
            "seed": 1,
            "dose": dose,
            "metric": list(metrics),
            "value": [0.1 * i + 1e-13 for i in range(len(metrics))],
            "higher_is_better": True,
            "n_train": pd.array([10] * len(metrics), dtype="int64"),
        }
    )
    if identity:
        table = table.assign(run_slot=f"slot-{run_id}", hparams='{"latent_dim": 8}')
    return table.assign(run_rows=len(table))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A run store of three runs with different columns and dtypes (old and new identity,
    ``dose`` all-null in one run and float in another)."""
    root = tmp_path / "study"
    write_table(run_table("aaa", ("r2", "mmd"), identity=False, dose=None), root / "runs" / "aaa.parquet")
    write_table(run_table("bbb", ("r2",), identity=True, dose=None), root / "runs" / "bbb.parquet")
    write_table(run_table("ccc", ("r2", "mmd", "e"), identity=True, dose=0.5), root / "runs" / "ccc.parquet")
    return root


def test_pack_then_unpack_gives_every_run_file_back_with_its_columns_dtypes_and_metadata(store: Path) -> None:
    originals = {f.name: (pd.read_parquet(f), pq.read_schema(f)) for f in (store / "runs").glob("*.parquet")}
    pack_runs(store)
    shutil.rmtree(store / "runs")
    written = unpack_runs(store)
    assert sorted(f.name for f in written) == sorted(originals)
    for name, (frame, schema) in originals.items():
        pd.testing.assert_frame_equal(pd.read_parquet(store / "runs" / name), frame, check_exact=True)
        assert pq.read_schema(store / "runs" / name).equals(schema, check_metadata=True)
    assert "hparams" not in pd.read_parquet(store / "runs" / "aaa.parquet").columns  # old runs stay old
    assert len(ResultStore(store).results()) == 6  # the store reads them as finished runs


def test_runs_sharing_a_schema_store_it_once(tmp_path: Path) -> None:
    """A grid's hundreds of runs share a handful of schemas: each is stored once, not per run
    (per run, the Kang grid's listing took 2.8 MB of a 6.6 MB file)."""
    root = tmp_path / "grid"
    for run_id in ("r1", "r2", "r3"):
        write_table(run_table(run_id, ("r2", "mmd"), identity=True, dose=None), root / "runs" / f"{run_id}.parquet")
    listing = json.loads(pq.read_schema(pack_runs(root)).metadata[RUNS_KEY])
    assert len(listing["schemas"]) == 1 and [run["schema"] for run in listing["runs"]] == [0, 0, 0]
    originals = {f.name: pd.read_parquet(f) for f in (root / "runs").glob("*.parquet")}
    shutil.rmtree(root / "runs")
    unpack_runs(root)
    for name, frame in originals.items():
        pd.testing.assert_frame_equal(pd.read_parquet(root / "runs" / name), frame, check_exact=True)


def test_unpack_leaves_a_run_file_already_in_the_store_as_it_is(store: Path) -> None:
    pack_runs(store)
    newer = run_table("bbb", ("r2", "e"), identity=True, dose=None)
    write_table(newer, store / "runs" / "bbb.parquet")
    assert [f.name for f in unpack_runs(store)] == []
    pd.testing.assert_frame_equal(pd.read_parquet(store / "runs" / "bbb.parquet"), newer)


def test_pack_refuses_a_truncated_run_file(store: Path) -> None:
    truncated = run_table("aaa", ("r2", "mmd"), identity=False, dose=None).iloc[:1]
    write_table(truncated, store / "runs" / "aaa.parquet")
    with pytest.raises(DataError, match="aaa.parquet was truncated; rerun `mtpert benchmark"):
        pack_runs(store)


def test_unpack_refuses_a_packed_table_that_names_a_path(store: Path) -> None:
    """runs.parquet is data a user may receive: a run 'name' with a path would write outside
    runs/ when unpacked."""
    pack_runs(store)
    table = pq.read_table(store / PACKED)
    listing = json.loads(table.schema.metadata[RUNS_KEY])
    listing["runs"][0]["file"] = "../../outside.parquet"
    pq.write_table(table.replace_schema_metadata({RUNS_KEY: json.dumps(listing).encode()}), store / PACKED)
    shutil.rmtree(store / "runs")
    with pytest.raises(DataError, match="not plain run-file names"):
        unpack_runs(store)
    assert not (store.parent / "outside.parquet").exists() and not (store / "runs").exists()


def test_unpack_refuses_a_truncated_packed_table(store: Path) -> None:
    target = pack_runs(store)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(DataError, match="cannot be read .* pack the run store again"):
        unpack_runs(store)


def test_pack_and_unpack_wait_for_no_benchmark_writing_the_store(store: Path) -> None:
    """A store a running benchmark holds is neither packed half-written nor unpacked into."""
    hold = (
        "import sys\nfrom mtpert.lock import output_lock\n"
        "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(store)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputInUseError, match=f"in use by PID {holder.pid}"):
            pack_runs(store)
        with pytest.raises(OutputInUseError):
            unpack_runs(store)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (store / PACKED).exists()


def test_study_commands_pack_and_unpack_every_store_below_a_folder(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    packed = runner.invoke(app, ["study", "pack", str(tmp_path)])
    assert packed.exit_code == 0, packed.output
    assert "packed 3 runs" in packed.output and (store / PACKED).is_file()
    shutil.rmtree(store / "runs")
    unpacked = runner.invoke(app, ["study", "unpack", str(tmp_path)])
    assert unpacked.exit_code == 0 and "unpacked 3 runs" in unpacked.output
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = runner.invoke(app, ["study", "unpack", str(empty)])
    assert refused.exit_code == 2 and "No runs.parquet at or under" in refused.output


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.name)
def test_each_study_has_its_command_config_summary_and_notes(study: Path) -> None:
    spec = yaml.safe_load((study / "study.yaml").read_text())
    for field in ("question", "answer", "command", "run_time", "data"):
        assert isinstance(spec.get(field), str) and spec[field].strip(), f"{study.name}: no {field}"
        assert "\n" not in spec[field].strip(), f"{study.name}: {field} is not one line"
    assert spec["config"] and all((study / c).is_file() for c in spec["config"]), f"{study.name}: config missing"
    assert all((study / s).is_file() for s in spec["summary"]), f"{study.name}: summary missing"
    assert spec["summary"] or spec.get("summary_missing"), f"{study.name}: no summary and no reason why"
    assert (study / "NOTES.md").is_file(), f"{study.name}: no NOTES.md"


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.name)
def test_no_study_command_names_a_path_outside_the_repository(study: Path) -> None:
    command = yaml.safe_load((study / "study.yaml").read_text())["command"]
    for word in shlex.split(command):
        for part in re.split(r"[=:,]", word):
            assert not part.startswith(("/", "~")), f"{study.name}: absolute path {part}"
            assert ".." not in Path(part).parts, f"{study.name}: {part} leaves the repository"


def test_every_packed_store_is_a_benchmark_directory_and_no_run_file_is_committed() -> None:
    stores = run_stores(BENCHMARKS, packed=True)
    assert len(stores) >= 10
    assert all((s / "config.json").is_file() for s in stores)
    assert not list(BENCHMARKS.glob("**/runs/*.parquet")) or (BENCHMARKS.parent / ".gitignore").read_text().count(
        "benchmarks/**/runs/"
    )


def test_the_committed_index_is_what_the_generator_writes_now() -> None:
    spec = importlib.util.spec_from_file_location("index", BENCHMARKS / "_tools" / "index.py")
    index = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(index)
    for path, render in index.OUTPUTS.items():
        assert path.read_text() == render(), f"{path} is stale: run python benchmarks/_tools/index.py"


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_cheapest_study_regenerates_its_committed_scores_with_its_own_command(
    kang_path: Path, tmp_path: Path
) -> None:
    """simple_baselines_kang's command, run as its study.yaml states it on a copy of the study
    (so the committed files stay untouched), gives every committed score again; only timings and
    memory may differ."""
    import os
    import subprocess
    import sys

    study = BENCHMARKS / "simple_baselines_kang"
    copy = tmp_path / "benchmarks"
    shutil.copytree(study, copy / study.name)
    shutil.copy(BENCHMARKS / "_common.py", copy / "_common.py")
    command = shlex.split(yaml.safe_load((study / "study.yaml").read_text())["command"])
    assert command[0] == "python"
    env = {**os.environ, "MTPERT_DATA_DIR": str(kang_path.parent)}
    subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, check=True, capture_output=True)
    keys = ["model", "seed", "group", "condition", "metric"]
    committed = pd.read_csv(study / "simple_baselines_kang.csv").sort_values(keys, ignore_index=True)
    rerun = pd.read_csv(copy / study.name / "simple_baselines_kang.csv").sort_values(keys, ignore_index=True)
    pd.testing.assert_frame_equal(rerun[keys + ["value"]], committed[keys + ["value"]], rtol=1e-9)
