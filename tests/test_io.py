"""mtpert.io: atomic writes, table files chosen by suffix, and file names made from labels.

The benchmark-level consequences (a killed run leaves nothing partial, labels as distinct folder
names) are in test_benchmark.py and test_faults*.py; these tests pin the functions themselves.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest

from mtpert.errors import ConfigError
from mtpert.io import (
    TEMP_PREFIX,
    atomic_path,
    atomic_write,
    safe_name,
    stale_temp_files,
    write_table,
)


class WriterFailed(RuntimeError):
    """What the writers below raise halfway through."""


def fail_halfway(f) -> None:
    f.write(b"half a result")
    raise WriterFailed


def test_a_writer_that_raises_leaves_the_old_file_and_no_temporary_file(tmp_path) -> None:
    target = tmp_path / "result.csv"
    target.write_text("the old result")
    with pytest.raises(WriterFailed):
        atomic_write(target, fail_halfway)
    assert target.read_text() == "the old result"
    assert [p.name for p in tmp_path.iterdir()] == ["result.csv"]


def test_a_writer_that_raises_creates_no_file(tmp_path) -> None:
    with pytest.raises(WriterFailed):
        atomic_write(tmp_path / "new" / "result.csv", fail_halfway)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_atomic_path_removes_its_temporary_file_when_the_block_raises(tmp_path) -> None:
    with pytest.raises(WriterFailed), atomic_path(tmp_path / "cells.h5ad") as tmp:
        tmp.write_bytes(b"partial")
        assert tmp.parent == tmp_path and tmp.name.startswith(TEMP_PREFIX)
        raise WriterFailed
    assert list(tmp_path.iterdir()) == []


def test_a_finished_write_replaces_the_target_with_normal_permissions(tmp_path) -> None:
    target = tmp_path / "result.txt"
    target.write_text("old")
    assert atomic_write(target, lambda f: f.write(b"new")) == target
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    assert stale_temp_files(tmp_path) == []


def test_stale_temp_files_finds_only_its_own_temporary_files(tmp_path) -> None:
    own = tmp_path / "runs" / f"{TEMP_PREFIX}abc.parquet.x1"
    own.parent.mkdir()
    own.write_bytes(b"left by a killed process")
    for users in (tmp_path / ".env", tmp_path / ".tmp-notes", tmp_path / "runs" / ".keep"):
        users.write_text("the user's")
    assert stale_temp_files(tmp_path) == []  # not recursive by default
    assert stale_temp_files(tmp_path, recursive=True) == [own]
    assert stale_temp_files(tmp_path / "missing") == []


@pytest.mark.parametrize("name", ["scores.csv", "scores.CSV", "scores.parquet", "scores.pq"])
def test_write_table_writes_the_format_its_suffix_names(tmp_path, name: str) -> None:
    if not name.lower().endswith(".csv"):
        pytest.importorskip(
            "pyarrow", reason="parquet needs pyarrow: pip install 'mtpert[parquet]'"
        )
    table = pd.DataFrame({"metric": ["r2_all", "e_distance"], "value": [0.5, 1.25]})
    path = write_table(table, tmp_path / name)
    read = pd.read_csv(path) if name.lower().endswith(".csv") else pd.read_parquet(path)
    pd.testing.assert_frame_equal(read, table)


@pytest.mark.parametrize("name", ["scores.txt", "scores", "scores.csv.gz"])
def test_write_table_refuses_an_unsupported_suffix_before_writing(tmp_path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"unsupported suffix .*use \.csv or \.parquet"):
        write_table(pd.DataFrame({"value": [1.0]}), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_write_table_refuses_a_folder(tmp_path) -> None:
    folder = tmp_path / "scores.csv"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        write_table(pd.DataFrame({"value": [1.0]}), folder)


def test_safe_name_keeps_the_label_readable_and_is_the_same_every_time() -> None:
    name = safe_name("CD14 Mono")
    assert name.startswith("CD14_Mono-") and len(name) == len("CD14_Mono-") + 8
    assert safe_name("CD14 Mono") == name  # stable: a resumed benchmark finds its folders again
    assert safe_name("type-0_a").startswith("type-0_a-")  # letters, digits, - and _ kept as written
    assert len(safe_name("x" * 300)) == 40 + 1 + 8


def test_safe_names_differ_on_case_insensitive_file_systems() -> None:
    """Cell types "B" and "b" would share one folder on macOS or Windows if only their text named it."""
    assert safe_name("B").lower() != safe_name("b").lower()
