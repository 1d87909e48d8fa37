"""Condition labels are read once, in one place (mtpert.data.labels): what is unambiguous is
normalised and reported, what is ambiguous is refused with the labels named and the fix, and a
combination is the same condition however it is spelled. Property tests: a label built from
parts reads back as exactly those parts, or is refused; never as other parts."""

from __future__ import annotations

import string
import time

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mtpert.benchmark import BenchmarkConfig, run_benchmark
from mtpert.cli import app
from mtpert.data import (
    DatasetSpec,
    holdout_combinations,
    holdout_condition,
    log_normalize,
    normalize_labels,
    predictable_combinations,
    simulate,
)
from mtpert.data.labels import canonical_labels
from mtpert.errors import DataError
from mtpert.models import get_model

SCREEN = DatasetSpec(combination_separator="+")
runner = CliRunner(env={"COLUMNS": "200"})


def screen(
    labels: dict[str, str], *, n_cells: int = 20, seed: int = 0, spec: DatasetSpec = SCREEN
) -> AnnData:
    """Two cell types x control and one group of ``n_cells`` per key of ``labels``, whose cells
    are then labelled with its value; a value 'X|Y' spells the group's cells alternately X and Y."""
    names = list(labels)
    adata = simulate(n_cell_types=2, n_genes=30, n_cells=n_cells, perturbations=names, seed=seed)
    column = adata.obs["condition"].astype(str).to_numpy().astype(object)
    for name, spelled in labels.items():
        at = np.flatnonzero(column == name)
        spellings = spelled.split("|")
        column[at] = np.array(
            [spellings[i % len(spellings)] for i in range(len(at))], dtype=object
        )  # 'U' cuts at NUL
    adata.obs[spec.condition_key] = (
        column  # strings: a categorical would take 'A\x00B' for 'A' (pandas' hash table)
    )
    return adata


def message(error: pytest.ExceptionInfo[DataError]) -> str:
    return str(error.value)


# ---------------------------------------------------------------------- refused: ambiguous labels
@pytest.mark.parametrize("label", ["A+", "+B", "A++B", "A + + B"])
def test_an_empty_part_is_refused_not_read_as_a_single(label: str) -> None:
    with pytest.raises(DataError, match="empty part") as error:
        SCREEN.parts(label)
    assert repr(label) in message(error) and "--separator" in message(error)
    adata = screen({"p": "A", "q": "B", "r": label})
    with pytest.raises(DataError, match="empty part") as error:
        SCREEN.validate(adata)
    assert repr(label) in message(error)


def test_a_doubled_separator_is_not_a_second_spelling_of_the_pair() -> None:
    """'A++B' beside 'A+B' was a second condition: an unseen-pair split could hold one out while
    the same pair trained under the other. Now the data is refused, naming the label."""
    adata = screen({"p": "A", "q": "B", "r": "A+B", "s": "A++B", "t": "C", "u": "A+C"})
    with pytest.raises(DataError, match=r"1 label with an empty part \('A\+\+B'\)"):
        holdout_combinations(adata, SCREEN, split_seed=1, min_cells=10)


def test_a_repeated_part_is_refused_not_scored_as_a_pair() -> None:
    adata = screen({"p": "A", "q": "A+A"})
    with pytest.raises(DataError, match=r"naming one perturbation twice \('A\+A'\)") as error:
        SCREEN.validate(adata)
    assert "name each perturbation once" in message(error)
    with pytest.raises(DataError, match="twice"):
        SCREEN.parts("B + A + B")


def test_many_offending_labels_are_counted_and_a_few_named() -> None:
    bad = [f"G{i}+" for i in range(8)]
    with pytest.raises(DataError) as error:
        canonical_labels(["A", *bad, "A+A", ""], SCREEN)
    text = message(error)
    assert "8 labels with an empty part ('G0+', 'G1+', 'G2+', 'G3+', 'G4+' and 3 more)" in text
    assert "1 label naming one perturbation twice ('A+A')" in text
    assert "1 label empty or only whitespace ('')" in text


@pytest.mark.parametrize("label", ["A\x00B", "A\x01", "KLF1\u202e", "A\nB", "A\tB", "\u200bA"])
def test_control_and_invisible_characters_are_refused_before_a_fit(label: str) -> None:
    """A NUL in a label used to pass the fit and fail in the h5ad writer; a right-to-left
    override makes a label print as another."""
    adata = screen({"p": "A", "q": label})
    with pytest.raises(DataError, match="control or invisible formatting characters") as error:
        SCREEN.validate(adata)
    assert repr(label) in message(error)  # shown escaped, never raw
    log_normalize(adata)
    with pytest.raises(DataError, match="invisible"):
        get_model("mean_shift")(SCREEN).fit(adata)


@pytest.mark.parametrize("label", ["", "   "])
def test_an_empty_label_is_refused(label: str) -> None:
    adata = screen({"p": "A", "q": label})
    with pytest.raises(DataError, match="empty or only whitespace"):
        SCREEN.validate(adata)


def test_a_separator_inside_a_gene_name_is_refused() -> None:
    """With '-' as separator, the single 'HLA-A' read as the pair ('HLA', 'A')."""
    spec = DatasetSpec(combination_separator="-")
    adata = screen({"p": "HLA-A", "q": "B2M", "r": "B2M-HLA-A", "s": "CD4-B2M"}, spec=spec)
    adata.var_names = ["HLA-A", "B2M", *adata.var_names[2:]]
    with pytest.raises(DataError, match="gene name") as error:
        spec.validate(adata)
    text = message(error)
    assert "2 labels holding a gene name" in text and "'HLA-A', 'B2M-HLA-A'" in text
    assert "--separator" in text and "'CD4-B2M'" not in text
    adata.obs["condition"] = adata.obs["condition"].astype(str).str.replace("-", "+")  # the fix
    adata.obs.loc[adata.obs["condition"] == "HLA+A", "condition"] = "HLA-A"
    assert SCREEN.parts("HLA-A") == ("HLA-A",)
    SCREEN.validate(adata)


def test_a_separator_that_runs_into_itself_is_refused() -> None:
    spec = DatasetSpec(combination_separator="__")
    assert spec.parts("A__B") == ("A", "B")
    with pytest.raises(DataError, match="runs into itself"):
        spec.parts("A___B")  # 'A_' + 'B' or 'A' + '_B'


@pytest.mark.parametrize("label", ["_\xa0__0", "0__ _", "_ __ctrl__0"])
def test_a_label_whose_canonical_spelling_would_run_into_the_separator_is_refused(label: str) -> None:
    """Found by the property test below: '_ __0' reads as ('_', '0') only while its space is
    there; its canonical spelling '___0' could be cut two ways, so the label is refused."""
    with pytest.raises(DataError, match="runs into itself"):
        DatasetSpec(combination_separator="__", control="ctrl").parts(label)


# ---------------------------------------------------------------------- normalised and reported
def test_whitespace_around_labels_and_parts_is_removed() -> None:
    """' A + B ' was a pair of ' A ' and ' B ', parts never applied alone."""
    adata = screen({"p": "A", "q": " B", "r": " A + B "})
    assert SCREEN.parts(" A + B ") == ("A", "B")
    with pytest.warns(UserWarning, match=r"' A \+ B ' -> 'A\+B'"):
        renamed = normalize_labels(adata, SCREEN)
    assert renamed == {" B": "B", " A + B ": "A+B"}
    assert predictable_combinations(adata, SCREEN, min_cells=10) == ["A+B"]


def test_a_control_part_is_dropped_and_an_all_control_label_is_the_control() -> None:
    """GEARS writes singles as 'A+ctrl': the control label is not a perturbation."""
    spec = DatasetSpec(combination_separator="+", control="ctrl")
    adata = screen({"p": "A+ctrl", "q": "ctrl+B", "r": "A+B", "s": "ctrl+ctrl"}, spec=spec)
    adata.obs["condition"] = adata.obs["condition"].astype(str).replace("control", "ctrl")
    assert spec.parts("A+ctrl") == ("A",) and spec.parts("ctrl+ctrl") == ("ctrl",)
    with pytest.warns(UserWarning, match="'A\\+ctrl' -> 'A'"):
        normalize_labels(adata, spec)
    assert spec.conditions(adata) == ["A", "A+B", "B"]
    assert int(spec.is_control(adata).sum()) == 2 * 20 + 2 * 20  # the control and 'ctrl+ctrl'
    assert predictable_combinations(adata, spec, min_cells=10) == ["A+B"]


def test_a_control_label_with_a_trailing_space_stays_the_control() -> None:
    adata = screen({"p": "A"})
    control = adata.obs["condition"] == "control"
    adata.obs["condition"] = np.where(control, "control ", adata.obs["condition"].astype(str))
    with pytest.raises(DataError, match=r"'control ' \(-> 'control'\).*normalize_labels"):
        SCREEN.validate(adata)  # refused, not taken for a perturbation
    with pytest.warns(UserWarning, match="'control ' -> 'control'"):
        normalize_labels(adata, SCREEN)
    assert SCREEN.conditions(adata) == ["A"] and SCREEN.is_control(adata).sum() == control.sum()


def test_one_combination_spelled_two_ways_becomes_its_sorted_parts() -> None:
    adata = screen({"p": "A", "q": "B", "r": "B+A|A+B"})
    with pytest.raises(DataError, match=r"'B\+A' \(-> 'A\+B'\).*mtpert.data.normalize_labels"):
        SCREEN.validate(adata)
    with pytest.warns(
        UserWarning, match=r"Renamed 1 labels of obs\['condition'\].*'B\+A' -> 'A\+B'"
    ):
        assert normalize_labels(adata, SCREEN) == {"B+A": "A+B"}
    assert (adata.obs["condition"] == "A+B").sum() == 2 * 20
    SCREEN.validate(adata)
    assert normalize_labels(adata, SCREEN) == {}  # canonical labels stay as they are


def test_a_combination_spelled_one_way_keeps_its_spelling() -> None:
    """Published screens are not renamed: Norman's 'SET_KLF1' stays, unsorted."""
    adata = screen({"p": "SET", "q": "KLF1", "r": "SET+KLF1", "s": "KLF1 + MAP2K6"})
    with pytest.warns(UserWarning):
        assert normalize_labels(adata, SCREEN) == {"KLF1 + MAP2K6": "KLF1+MAP2K6"}
    assert {"SET+KLF1", "KLF1+MAP2K6"} <= set(SCREEN.conditions(adata))


def test_a_held_out_pair_never_trains_under_another_spelling() -> None:
    """Several pairs, each spelled two ways: whichever the split seed holds out, no training or
    validation cell has the same set of parts."""
    pairs = {"r": "B+A|A+B", "s": "A + C|C+A", "t": "B+C|C + B", "u": "D+A|A+D"}
    raw = screen({"p": "A", "q": "B", "v": "C", "w": "D", **pairs})
    with pytest.raises(DataError, match="normalize_labels"):
        holdout_combinations(raw, SCREEN, split_seed=1, min_cells=10)
    with pytest.warns(UserWarning):
        normalize_labels(raw, SCREEN)
    parts = {c: frozenset(SCREEN.parts(c)) for c in SCREEN.conditions(raw)}
    labels = raw.obs["condition"].astype(str)
    for seed in range(1, 6):
        split = holdout_combinations(raw, SCREEN, split_seed=seed, fraction=0.5, min_cells=10)
        held = {parts[t.condition] for t in split.targets}
        trained = {parts[c] for c in labels[split.train.append(split.val)] if c != "control"}
        assert held and not held & trained
        assert (labels[split.heldout].map(parts).isin(held)).all()
        assert len(split.heldout) == sum(40 for _ in held)  # every cell of the pair, both spellings


def test_holding_out_a_condition_finds_it_however_it_is_spelled() -> None:
    adata = screen({"p": "A", "q": "B", "r": "A+B"})
    split = holdout_condition(adata, SCREEN, "B + A", min_cells=10)
    assert {t.condition for t in split.targets} == {"A+B"} and len(split.heldout) == 40


def test_normalizing_works_on_the_distinct_labels_not_per_cell() -> None:
    """200,000 cells, a few hundred labels: quick, and an unlabelled cell stays unlabelled."""
    n = 200_000
    pair = np.arange(n) % 300
    labels = np.where(
        np.arange(n) // 300 % 2, "G" + pair.astype(str) + "+H", "H+G" + pair.astype(str)
    ).astype(object)
    labels[0] = None
    obs = pd.DataFrame({"condition": pd.Categorical(labels)}, index=np.arange(n).astype(str))
    adata = AnnData(sp.csr_matrix((n, 3), dtype=np.float32), obs=obs)
    start = time.perf_counter()
    with pytest.warns(UserWarning):
        renamed = normalize_labels(adata, SCREEN)
    assert time.perf_counter() - start < 2.0
    assert len(renamed) == 300 and adata.obs["condition"].nunique() == 300
    assert adata.obs["condition"].isna().sum() == 1


# ---------------------------------------------------------------------- settings refused up front
@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"combination_separator": ""}, "separator '' is empty or only whitespace.*--separator"),
        ({"combination_separator": " "}, "separator ' ' is empty or only whitespace.*--separator"),
        ({"combination_separator": " + "}, r"whitespace around it.*give '\+'"),
        (
            {"combination_separator": "+", "control": "ctrl+"},
            "contains the combination separator.*--separator.*--control",
        ),
        ({"control": "control "}, "whitespace around it.*give 'control'.*--control"),
        ({"control": ""}, "control label '' is empty.*--control"),
        ({"control": "ctrl\x00"}, "control or invisible.*--control"),
    ],
)
def test_a_spec_that_labels_cannot_be_read_with_is_refused_when_built(
    settings: dict, match: str
) -> None:
    with pytest.raises(DataError, match=match):
        DatasetSpec(**settings)


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--separator", "", "is empty"),
        ("--separator", " ", "only whitespace"),
        ("--control", "control ", "whitespace around it"),
    ],
)
def test_the_command_line_refuses_such_a_setting_in_one_line(
    tmp_path, option: str, value: str, said: str
) -> None:
    path = tmp_path / "data.h5ad"
    screen({"p": "A"}).write_h5ad(path)
    result = runner.invoke(app, ["data", "info", str(path), option, value])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and said in result.output and option in result.output


def test_the_benchmark_command_refuses_an_empty_separator_in_one_line(tmp_path) -> None:
    path = tmp_path / "data.h5ad"
    screen({"p": "A"}).write_h5ad(path)
    result = runner.invoke(
        app,
        [
            "benchmark",
            "--data",
            str(path),
            "--models",
            "control",
            "--separator",
            "",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert (
        result.exit_code == 2 and "Traceback" not in result.output and "is empty" in result.output
    )


# ---------------------------------------------------------------------- where data is read
def test_fit_reads_the_data_with_its_labels_normalized(tmp_path) -> None:
    path = tmp_path / "data.h5ad"
    screen({"p": "A", "q": "B", "r": "B+A|A+B"}).write_h5ad(path)
    result = runner.invoke(
        app,
        [
            "fit",
            str(path),
            "--model",
            "mean_shift",
            "--out",
            str(tmp_path / "m"),
            "--separator",
            "+",
            "--n-hvg",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "'B+A' -> 'A+B'" in result.output and "it predicts: A, A+B, B" in result.output


def test_a_command_says_a_renaming_as_one_warning_line_without_python_source(tmp_path) -> None:
    path = tmp_path / "data.h5ad"
    screen({"p": "A", "q": "B", "r": "B+A|A+B"}).write_h5ad(path)
    result = runner.invoke(app, ["data", "info", str(path), "--separator", "+"])
    assert result.exit_code == 0, result.output
    assert "warning: Renamed 1 labels" in result.output
    assert "UserWarning" not in result.output and "normalize_labels(" not in result.output


def test_predict_reads_the_asked_condition_as_labels_are_read() -> None:
    data = screen({"p": "A", "q": "B", "r": "A+B"})
    log_normalize(data)
    model = get_model("additive")(SCREEN).fit(data)
    control = data[data.obs["condition"].astype(str) == "control"]
    spelled = model.predict(control, " B + A ")
    assert set(spelled.obs["condition"]) == {"B+A"}  # whitespace gone; the set of parts decides
    np.testing.assert_allclose(spelled.X, model.predict(control, "A+B").X)
    with pytest.raises(DataError, match="empty part"):
        model.predict(control, "A+")
    with pytest.raises(DataError, match="is the control condition"):
        model.predict(control, "control ")


def test_data_info_shows_the_parts_and_the_renamed_labels(tmp_path) -> None:
    path = tmp_path / "data.h5ad"
    screen({"p": "A", "q": "B", "r": "B+A|A+B", "s": "D + C"}).write_h5ad(path)
    result = runner.invoke(app, ["data", "info", str(path), "--separator", "+"])
    assert result.exit_code == 0, result.output
    assert "'B+A' -> 'A+B', 'D + C' -> 'D+C'" in result.output
    assert "parts as read: A+B = A & B, D+C = D & C." in result.output


def test_data_info_names_an_ambiguous_label_in_one_line(tmp_path) -> None:
    path = tmp_path / "data.h5ad"
    screen({"p": "A", "q": "A+"}).write_h5ad(path)
    result = runner.invoke(app, ["data", "info", str(path), "--separator", "+"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "'A+'" in result.output and "empty part" in result.output


def test_the_benchmark_reads_a_file_with_its_labels_normalized(tmp_path) -> None:
    path = tmp_path / "data.h5ad"
    screen({"p": "A", "q": "B", "r": "B+A|A+B", "s": "C", "t": "C + A"}).write_h5ad(path)
    config = BenchmarkConfig(
        data=str(path), models=("control",), split="combination", split_seeds=(1,), seeds=(1,), n_hvg=0,
        noise_ceiling_repeats=0, spec=SCREEN, min_cells=10,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="Renamed"):
        results = run_benchmark(config, tmp_path / "out").results()
    assert set(results["condition"]) <= {"A+B", "C+A"} and len(set(results["condition"])) == 1


# ---------------------------------------------------------------------- properties
IDENTIFIER = st.text(string.ascii_letters + string.digits + "-._", min_size=1, max_size=6)
SEPARATOR = st.one_of(
    st.sampled_from(
        ["+", "_", "-", ".", "|", ";", ",", "++", "__", "+-", "&&", " ", "", " + ", "\t"]
    ),
    st.text(string.punctuation + string.ascii_letters + " ", min_size=1, max_size=3),
)
CONTROL = st.one_of(
    st.sampled_from(["ctrl", "control", "NT", "non-targeting", " ctrl", ""]), IDENTIFIER
)
SPACE = st.text(" \u00a0\u3000\t", max_size=2)


def build(parts: list[str], separator: str, spaces: list[str]) -> str:
    """``parts`` joined by ``separator``, with ``spaces[i]`` around each part."""
    padded = [
        f"{spaces[i % len(spaces)]}{p}{spaces[(i + 1) % len(spaces)]}" for i, p in enumerate(parts)
    ]
    return separator.join(padded)


def spec_or_none(separator: str, control: str) -> DatasetSpec | None:
    try:
        return DatasetSpec(combination_separator=separator, control=control)
    except DataError:  # refused up front (tested above): no label is read with it
        return None


# derandomize: every run (CI's included) tries the same examples; explore others with
# pytest --hypothesis-seed=N (eight seeds passed when this was written).
@settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.filter_too_much]
)
@given(
    parts=st.lists(IDENTIFIER | st.sampled_from(["ctrl", "control", "NT"]), min_size=1, max_size=4),
    separator=SEPARATOR,
    control=CONTROL,
    spaces=st.lists(SPACE, min_size=1, max_size=3),
)
def test_a_label_reads_as_the_parts_it_was_built_from_or_is_refused(
    parts, separator, control, spaces
) -> None:
    spec = spec_or_none(separator, control)
    assume(spec is not None and all(separator not in p for p in parts))
    label = build(parts, separator, spaces)
    try:
        read = spec.parts(label)
    except DataError:
        return  # refused: fine; mis-split: not
    expected = tuple(p for p in parts if p != control) or (control,)
    assert read == expected, f"{label!r} read as {read}"
    assert spec.parts(separator.join(read)) == read  # round trip


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    parts=st.lists(IDENTIFIER, min_size=1, max_size=4, unique=True),
    separator=st.sampled_from("+_-.|;,/&:"),
    spaces=st.lists(st.text(" \u00a0", max_size=2), min_size=1, max_size=3),
)
def test_a_clean_label_is_never_refused(parts, separator, spaces) -> None:
    assume(all(separator not in p for p in parts))
    assume("ctrl" not in parts)
    spec = DatasetSpec(combination_separator=separator, control="ctrl")
    assert spec.parts(build([*parts, "ctrl"], separator, spaces)) == tuple(parts)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    before=st.lists(IDENTIFIER, max_size=2),
    gene=st.lists(IDENTIFIER, min_size=2, max_size=3),
    after=st.lists(IDENTIFIER, max_size=2),
    separator=st.sampled_from(["+", "_", "-", ".", "__"]),
)
def test_a_gene_name_holding_the_separator_is_refused_never_split(
    before, gene, after, separator
) -> None:
    assume(all(separator not in p for p in (*before, *gene, *after)))
    spec = DatasetSpec(combination_separator=separator)
    name = separator.join(gene)
    with pytest.raises(DataError):  # as a gene name, or for another ambiguity; never split
        canonical_labels(
            [separator.join([*before, name, *after])], spec, genes=pd.Index([name, "OTHER"])
        )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    parts=st.lists(IDENTIFIER, min_size=2, max_size=4, unique=True),
    orders=st.lists(st.permutations(range(4)), min_size=1, max_size=4),
    spaces=st.lists(st.text(" ", max_size=2), min_size=1, max_size=3),
)
def test_every_spelling_of_a_combination_gets_one_canonical_label(parts, orders, spaces) -> None:
    assume(all("+" not in p for p in parts) and "control" not in parts)
    spellings = [
        build([parts[i] for i in order if i < len(parts)], "+", spaces) for order in orders
    ]
    canonical = canonical_labels(spellings, SCREEN)
    labels = set(canonical.values())
    assert len(labels) == 1
    label = labels.pop()
    assert set(SCREEN.parts(label)) == set(parts)
    cleaned = {"+".join(SCREEN.parts(s)) for s in spellings}
    assert label == (cleaned.pop() if len(cleaned) == 1 else "+".join(sorted(parts)))
    assert canonical_labels([label], SCREEN) == {label: label}  # canonical stays canonical


def test_the_simulators_labels_are_canonical() -> None:
    from mtpert.data import simulate_screen

    data = simulate_screen(n_regulators=6, n_pairs=4, n_genes=30, n_cells=4, seed=0)
    spec = DatasetSpec(condition_key="perturbation", combination_separator="+", guide_key="guide")
    spec.validate(data)
    assert normalize_labels(data, spec) == {}
