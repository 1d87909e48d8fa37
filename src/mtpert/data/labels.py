"""Condition labels, read once and in one place: which perturbations each label names.

A label such as ``'KLF1+MAP2K6'`` combines perturbations, joined by the spec's
``combination_separator``. Every part of mtpert that needs the perturbations of a label (splits,
models, metrics, ``mtpert data info``) asks :meth:`DatasetSpec.parts
<mtpert.data.spec.DatasetSpec.parts>`, which reads it here, so one label is never two things.

What is unambiguous is normalised by :func:`normalize_labels`, and reported:

* whitespace around a label and around each of its parts (``' A + B '`` is ``'A+B'``);
* parts that are the control label (GEARS's ``'A+ctrl'`` is ``'A'``; ``'ctrl+ctrl'`` is the
  control);
* the order of parts, where one combination is spelled in several orders (``'B+A'`` and
  ``'A+B'`` both become ``'A+B'``: the parts sorted). A combination with one spelling keeps it, so
  that labels of published screens are not renamed.

What is ambiguous is refused with a :class:`~mtpert.errors.DataError` that names the labels and
the fix: empty labels, control or invisible formatting characters, empty parts (``'A+'``,
``'A++B'``), a separator that overlaps itself in a label (``'A___B'`` with ``'__'``), a part named
twice (``'A+A'``), and a label that is a gene name holding the separator (``'HLA-A'`` with ``'-'``).

The identity of a condition is its set of parts; :meth:`DatasetSpec.validate
<mtpert.data.spec.DatasetSpec.validate>` refuses data whose labels are not in canonical form, so
that one set of parts has one label everywhere.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections.abc import Collection, Iterable
from functools import lru_cache
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mtpert.errors import DataError

if TYPE_CHECKING:
    from anndata import AnnData

    from mtpert.data.spec import DatasetSpec

UNREADABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories refused in labels: control characters (NUL, tab, newline...), invisible
formatting characters (bidi overrides such as U+202E, zero-width spaces), lone surrogates, and
line and paragraph separators. They make a label print as something it is not, or break files."""

SHOWN = 5
"""Labels quoted in a message (then: how many more)."""

_SEPARATOR_FIX = "(DatasetSpec(combination_separator=...); CLI: --separator)"
_CONTROL_FIX = "(DatasetSpec(control=...); CLI: --control)"

_REFUSALS: dict[str, tuple[str, str]] = {
    "empty": ("empty or only whitespace", "give those cells a label, or drop them"),
    "unreadable": (
        "holding control or invisible formatting characters",
        "remove those characters (NUL, tab, U+202E...; the labels are shown escaped)",
    ),
    "empty_part": (
        "with an empty part",
        "a separator at an end or doubled: correct the labels, or give the separator they use "
        + f"{_SEPARATOR_FIX}",
    ),
    "overlap": (
        "in which the separator runs into itself",
        "the parts could be cut two ways: correct the labels, or give a separator that cannot "
        + f"overlap itself {_SEPARATOR_FIX}",
    ),
    "repeated_part": (
        "naming one perturbation twice",
        "name each perturbation once, or give distinct ones (two guides of a gene) distinct names",
    ),
    "gene_name": (
        "holding a gene name (of var_names) that contains the separator",
        "the name would be cut into parts: give a separator that no gene name contains "
        + f"{_SEPARATOR_FIX}, or rename those perturbations",
    ),
}
"""Why a label is refused, by kind: what is wrong with it, and the fix."""


class _Refused(Exception):
    """A label cannot be read unambiguously; ``kind`` is a key of :data:`_REFUSALS`."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def unreadable(text: str) -> bool:
    """Whether ``text`` holds a character of :data:`UNREADABLE_CATEGORIES`."""
    return any(unicodedata.category(ch) in UNREADABLE_CATEGORIES for ch in text)


def check_spec(spec: DatasetSpec) -> None:
    """Raise :class:`DataError` if the spec's control label or separator cannot be read in labels.

    Refused: an empty control label, or one with surrounding whitespace (labels are read without
    it) or unreadable characters; an empty or whitespace-only separator, one with surrounding
    whitespace or unreadable characters, and one the control label contains.
    """
    control, separator = spec.control, spec.combination_separator
    if not isinstance(control, str) or not control.strip():
        raise DataError(
            f"The control label {control!r} is empty; give the value of the condition column "
            f"that marks control cells {_CONTROL_FIX}."
        )
    _require_as_printed(control, "control label", _CONTROL_FIX)
    if separator is None:
        return
    if not isinstance(separator, str) or not separator.strip():
        raise DataError(
            f"The combination separator {separator!r} is empty or only whitespace, which cannot "
            "divide parts (whitespace around parts is ignored); give the text between combined "
            "perturbations, e.g. '+' (DatasetSpec(combination_separator='+'); CLI: --separator "
            "'+'), or none if no label combines perturbations."
        )
    _require_as_printed(separator, "combination separator", _SEPARATOR_FIX)
    if separator in control:
        raise DataError(
            f"The control label {control!r} contains the combination separator {separator!r}, so "
            "it would read as a combination; give another separator (CLI: --separator) or "
            "control label (CLI: --control)."
        )


def _require_as_printed(text: str, what: str, fix: str) -> None:
    """Raise :class:`DataError` if the setting ``text`` has whitespace around it (labels and their
    parts are read without it) or holds an unreadable character."""
    if text != text.strip():
        raise DataError(
            f"The {what} {text!r} has whitespace around it, and labels and their parts are read "
            f"without it; give {text.strip()!r} {fix}."
        )
    if unreadable(text):
        raise DataError(
            f"The {what} {text!r} holds control or invisible formatting characters; give it as "
            f"printed {fix}."
        )


def _pieces(label: str, separator: str | None) -> list[str]:
    """``label`` cut at the separator, each piece without surrounding whitespace; a label that
    cannot be cut unambiguously raises :class:`_Refused`."""
    if not label.strip():
        raise _Refused("empty")
    if unreadable(label):
        raise _Refused("unreadable")
    if separator is None:
        return [label.strip()]
    pieces = [p.strip() for p in label.split(separator)]
    if "" in pieces:
        raise _Refused("empty_part")
    if _overlapping(label, separator):
        raise _Refused("overlap")
    return pieces


def _overlapping(label: str, separator: str) -> bool:
    """Whether occurrences of ``separator`` in ``label`` overlap ('A___B' with '__'): then the
    label could be cut two ways."""
    starts = [m.start() for m in re.finditer(f"(?={re.escape(separator)})", label)]
    return any(b - a < len(separator) for a, b in pairwise(starts))


def _parts(label: str, spec: DatasetSpec, genes: Collection[str] = ()) -> tuple[str, ...]:
    """The perturbations ``label`` names, control parts dropped (``()``: the control); raises
    :class:`_Refused` for a label that cannot be read unambiguously. A label whose run of two or
    more pieces, rejoined, is one of ``genes`` is refused: the separator cut a gene's name."""
    separator = spec.combination_separator
    pieces = _pieces(label, separator)
    if separator is not None and len(genes):
        for start in range(len(pieces) - 1):
            for stop in range(start + 2, len(pieces) + 1):
                if separator.join(pieces[start:stop]) in genes:
                    raise _Refused("gene_name")
    parts = tuple(p for p in pieces if p != spec.control)
    if separator is not None and _overlapping(separator.join(parts), separator):
        raise _Refused("overlap")  # the canonical spelling would not read back: '_ __0' is '___0'
    if len(set(parts)) < len(parts):
        raise _Refused("repeated_part")
    return parts


@lru_cache(maxsize=65536)
def parse_label(label: str, spec: DatasetSpec) -> tuple[str, ...]:
    """The perturbations ``label`` names under ``spec``, in its order, without whitespace or
    control parts; ``()`` for the control (``' ctrl '``, ``'ctrl+ctrl'``).

    Raises:
        DataError: the label cannot be read unambiguously; the message says why and the fix.
    """
    try:
        return _parts(label, spec)
    except _Refused as refused:
        what, fix = _REFUSALS[refused.kind]
        raise DataError(
            f"The condition label {label!r} cannot be read unambiguously ({_reading(spec)}): "
            f"a label {what}; {fix}."
        ) from None


def _reading(spec: DatasetSpec) -> str:
    """How labels are read, for messages: ``"separator '+', control 'ctrl'"``."""
    separator = spec.combination_separator
    return f"{'no separator' if separator is None else f'separator {separator!r}'}, control {spec.control!r}"


def _some(texts: list[str]) -> str:
    """The first :data:`SHOWN` of ``texts``, and how many more."""
    more = f" and {len(texts) - SHOWN} more" if len(texts) > SHOWN else ""
    return ", ".join(texts[:SHOWN]) + more


def canonical_labels(
    labels: Iterable[str], spec: DatasetSpec, *, genes: Collection[str] = (), key: str | None = None
) -> dict[str, str]:
    """Each distinct label of ``labels`` and its canonical spelling (see the module's rules).

    Args:
        labels: the labels of a condition column (repeats allowed; read once each).
        genes: gene names; a label holding one that contains the separator is refused.
        key: the column's name, for messages (default: the spec's condition key).

    Raises:
        DataError: naming, for each reason, a few of the labels that cannot be read
            unambiguously, how many there are, and the fix.
    """
    parsed: dict[str, tuple[str, ...]] = {}
    refused: dict[str, list[str]] = {}
    for label in dict.fromkeys(labels):
        try:
            parsed[label] = _parts(label, spec, genes)
        except _Refused as error:
            refused.setdefault(error.kind, []).append(label)
    if refused:
        reasons = "; ".join(
            f"{len(bad)} label{'s' * (len(bad) > 1)} {_REFUSALS[kind][0]} ({_some([repr(b) for b in bad])}): {_REFUSALS[kind][1]}"
            for kind, bad in refused.items()
        )
        raise DataError(
            f"obs['{key or spec.condition_key}'] has labels that cannot be read unambiguously as "
            f"perturbations ({_reading(spec)}): {reasons}."
        )
    separator = spec.combination_separator or ""
    spellings: dict[frozenset[str], set[str]] = {}
    for parts in parsed.values():
        spellings.setdefault(frozenset(parts), set()).add(separator.join(parts))
    canonical = {
        combination: spelled.pop() if len(spelled) == 1 else separator.join(sorted(combination))
        for combination, spelled in spellings.items()
    }
    canonical[frozenset()] = spec.control
    return {label: canonical[frozenset(parts)] for label, parts in parsed.items()}


def present_labels(column: pd.Series) -> list[str]:
    """The distinct values of an obs column that some cell has, as strings: read from the
    categories of a categorical column, not cell by cell. Other columns are read with Python's
    string comparison, not pandas' hash table, which takes 'A\\x00B' for 'A' (pandas 2.3)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy()
        return [str(c) for c in column.cat.categories[np.unique(codes[codes >= 0])]]
    return list(dict.fromkeys(map(str, column.dropna().to_numpy())))


def label_spellings(adata: AnnData, spec: DatasetSpec) -> dict[str, str]:
    """Each condition label of ``adata`` and its canonical spelling (:func:`canonical_labels`,
    with the data's genes)."""
    column = adata.obs[spec.condition_key]
    return canonical_labels(
        present_labels(column), spec, genes=adata.var_names, key=spec.condition_key
    )


def renaming_note(renamed: dict[str, str], key: str) -> str:
    """One sentence listing (a few of) the labels renamed to their canonical spelling."""
    pairs = _some([f"{old!r} -> {new!r}" for old, new in renamed.items()])
    return (
        f"Renamed {len(renamed)} labels of obs['{key}'] to their canonical spelling (whitespace, "
        f"control parts, order of parts): {pairs}."
    )


def normalize_labels(adata: AnnData, spec: DatasetSpec) -> dict[str, str]:
    """Rename the condition labels of ``adata`` to their canonical spelling, in place, and warn
    which were renamed: what :meth:`DatasetSpec.validate` then accepts.

    Works on the distinct labels, not cell by cell; a renamed column becomes categorical.
    The command line and :func:`mtpert.benchmark.run_benchmark` (given a file or a dataset name)
    call it on the data they read; call it yourself on an AnnData you pass to mtpert.

    Returns:
        The labels renamed (old -> new); empty if every label was canonical.

    Raises:
        DataError: a label cannot be read unambiguously (see :func:`canonical_labels`).
    """
    key = spec.condition_key
    if key not in adata.obs.columns:
        raise DataError(
            f"obs key '{key}' not found; available obs columns: {list(adata.obs.columns)}. "
            "Pass the right name in DatasetSpec (CLI: --condition-key)."
        )
    spelling = label_spellings(adata, spec)
    renamed = {old: new for old, new in spelling.items() if old != new}
    if renamed:
        column = adata.obs[key].astype("category").cat.remove_unused_categories()
        spelled = [spelling[str(c)] for c in column.cat.categories]
        categories = pd.Index(spelled).unique()
        old_codes = column.cat.codes.to_numpy()
        codes = np.where(
            old_codes >= 0, categories.get_indexer(spelled)[old_codes], -1
        )  # -1: no label
        adata.obs[key] = pd.Categorical.from_codes(codes, categories=categories)
        warnings.warn(renaming_note(renamed, key), UserWarning, stacklevel=2)
    return renamed


def check_labels(adata: AnnData, spec: DatasetSpec) -> None:
    """Raise :class:`DataError` if a condition label of ``adata`` cannot be read unambiguously, or
    is not in canonical form (then naming :func:`normalize_labels`, which puts it so)."""
    renamed = {old: new for old, new in label_spellings(adata, spec).items() if old != new}
    if renamed:
        shown = _some([f"{old!r} (-> {new!r})" for old, new in renamed.items()])
        raise DataError(
            f"{len(renamed)} labels of obs['{spec.condition_key}'] are not in canonical form: "
            f"{shown}. One perturbation or combination spelled two ways would count as two "
            "conditions (a held-out pair could train under its other spelling). Call "
            "mtpert.data.normalize_labels(adata, spec) first (the command line does so when it "
            "reads data)."
        )
