"""The documentation: the tutorial notebook runs, the site builds, and the READMEs' paths exist.

Each study under ``benchmarks/`` has hand-written ``NOTES.md`` (tests/test_studies.py checks the
study folders); the tests here check that the READMEs, the docs and those notes name only files
that exist.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TUTORIAL = DOCS / "tutorial.ipynb"
BENCHMARKS = REPO / "benchmarks"
API_PACKAGES = (
    "data",
    "models",
    "train",
    "metrics",
    "scoring",
    "tuning",
    "uncertainty",
    "benchmark",
    "pl",
    "io",
)
GUIDE_PAGES = sorted((DOCS / "guide").glob("*.md"))
README_MAX_LINES = 120

# A path under benchmarks/ as the documents write it: letters, digits, _ - . / and glob stars.
PATH_CHARS = r"[\w*./-]*[\w*/]"
REPO_PATH = re.compile(rf"(?<![\w/])benchmarks/{PATH_CHARS}")
NOTES_NAME = re.compile(r"`([\w./-]+\.(?:md|csv|png))`")  # names in notes, relative to their study


def markdown_of(path: Path) -> str:
    """The text of a Markdown file, or of a notebook's Markdown cells."""
    if path.suffix != ".ipynb":
        return path.read_text()
    nbformat = pytest.importorskip(
        "nbformat", reason="reading the notebook needs nbformat (the test extra)"
    )
    notebook = nbformat.read(path, as_version=4)
    return "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")


def named_paths() -> dict[str, set[Path]]:
    """Every path under benchmarks/ that a README, a docs page or a results note names, by document."""
    named: dict[str, set[Path]] = {}
    documents = [
        REPO / "README.md",
        BENCHMARKS / "README.md",
        *sorted(DOCS.rglob("*.md")),
        TUTORIAL,
    ]
    for document in documents:
        text = markdown_of(document)
        paths = {REPO / p for p in REPO_PATH.findall(text)}
        named[str(document.relative_to(REPO))] = paths
    for note in sorted(BENCHMARKS.glob("*/NOTES.md")):
        text = note.read_text()
        paths = {REPO / p for p in REPO_PATH.findall(text)}
        paths |= {
            note.parent / name
            for name in NOTES_NAME.findall(text)
            if not name.startswith("benchmarks/")
        }
        named[str(note.relative_to(REPO))] = paths
    return named


def exists(path: Path) -> bool:
    """Whether ``path`` exists; a glob pattern must match at least one file."""
    if "*" in path.name or "*" in str(path.parent):
        return any(REPO.glob(str(path.relative_to(REPO))))
    return path.exists()


def test_every_results_file_a_readme_names_exists() -> None:
    missing = {
        document: sorted(str(p.relative_to(REPO)) for p in paths if not exists(p))
        for document, paths in named_paths().items()
    }
    missing = {document: paths for document, paths in missing.items() if paths}
    assert not missing, f"paths named but absent (renamed or never committed?): {missing}"


def test_tutorial_is_stored_without_outputs() -> None:
    """Outputs stay out of git: the notebook is executed by the tests and by the docs build."""
    nbformat = pytest.importorskip(
        "nbformat", reason="reading the notebook needs nbformat (the test extra)"
    )
    notebook = nbformat.read(TUTORIAL, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code), (
        "docs/tutorial.ipynb holds outputs; clear them (e.g. jupyter nbconvert --clear-output --inplace)"
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tutorial_notebook_runs_without_errors(tmp_path) -> None:
    nbformat = pytest.importorskip("nbformat", reason="running the tutorial needs the test extra")
    nbclient = pytest.importorskip("nbclient", reason="running the tutorial needs the test extra")
    pytest.importorskip("ipykernel", reason="running the tutorial needs the test extra")
    notebook = nbformat.read(TUTORIAL, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    assert figures >= 3  # loss curves, scatter, heatmap


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(600)
def test_docs_site_builds_strictly_and_documents_every_public_name(tmp_path) -> None:
    pytest.importorskip(
        "mkdocs", reason="building the site needs the docs extra: pip install -e '.[docs]'"
    )
    pytest.importorskip(
        "mkdocstrings", reason="building the site needs the docs extra: pip install -e '.[docs]'"
    )
    pytest.importorskip(
        "mkdocs_jupyter", reason="building the site needs the docs extra: pip install -e '.[docs]'"
    )
    pytest.importorskip(
        "markdown_exec", reason="building the site needs the docs extra: pip install -e '.[docs]'"
    )
    site = tmp_path / "site"
    env = {
        **os.environ,
        "MTPERT_DOCS_EXECUTE": "false",
        "NO_MKDOCS_2_WARNING": "1",
    }  # the notebook's run is tested above; the user guide's examples run in this build
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert build.returncode == 0, build.stderr[-5000:]
    for package in API_PACKAGES:
        page = (site / "api" / package / "index.html").read_text()
        documented = {
            anchor.rsplit(".", 1)[-1] for anchor in re.findall(r'id="(mtpert\.[\w.]+)"', page)
        }
        assert not set(public_names(package)) - documented, f"mtpert.{package}: not in its API page"
    cli = (site / "cli" / "index.html").read_text()
    for command in ("benchmark", "report", "evaluate", "data-info"):
        assert f'id="mtpert-{command}"' in cli  # each command's --help, taken at build time
    for page in GUIDE_PAGES:  # each guide page shows the output of its example, run while building
        html = (site / "guide" / page.stem / "index.html").read_text()
        assert '<div class="result"' in html, f"{page.name}: no executed example"
        assert "Traceback" not in html, f"{page.name}: an example raised"


def public_names(package: str) -> list[str]:
    """``__all__`` of ``mtpert.<package>``, or the functions and classes it defines."""
    module = importlib.import_module(f"mtpert.{package}")
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module.__name__
    ]


def code_blocks(text: str, info: str) -> list[str]:
    """The fenced code blocks of Markdown ``text`` whose info string (``python``, ``bash``...)
    matches the regular expression ``info``."""
    return re.findall(rf"^```{info}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_readme_is_a_front_door() -> None:
    """Short; its test command is exactly what CI runs; its links lead to files that exist; every
    guide page is in the site's navigation and is linked from the README."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    commands = [block.strip() for block in code_blocks(readme, "bash")]
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[0].endswith(".venv/bin/mtpert demo")
    assert commands[1] in ci.splitlines(), "the README's test command is not the one .ci/run runs"
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert not [link for link in links if not (REPO / link).exists()], links
    nav = (REPO / "mkdocs.yml").read_text()
    for page in GUIDE_PAGES:
        assert f"guide/{page.name}" in nav and f"docs/guide/{page.name}" in readme, page.name
        assert code_blocks(page.read_text(), 'python exec="on".*'), f"{page.name}: no example"


@pytest.mark.slow
def test_readme_library_example_runs(capsys) -> None:
    """The README's Python example runs as written (with fewer epochs, to stay fast)."""
    (example,) = code_blocks((REPO / "README.md").read_text(), "python")
    call = 'get_model("mtae_plus_ot_anchored")(spec)'
    assert call in example  # the README's recommended model
    fast = example.replace(call, call.replace("(spec)", "(spec, max_epochs=2)"))
    exec(fast, {})  # noqa: S102 (the repository's own README)
    assert "r2_top100" in capsys.readouterr().out
