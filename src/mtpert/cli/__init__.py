"""The ``mtpert`` command line. Each subcommand is a thin layer over one public function.

Heavy modules (scanpy, torch) are imported inside the commands, so ``mtpert --help`` is instant.
"""

from typing import Annotated

import typer

from mtpert.cli import benchmark, data, demo, evaluate, fit, models, peers, study, tune
from mtpert.cli.options import console, fit_consoles_to_output

VERSIONS_OF = ("python", "torch", "anndata", "scanpy", "numpy")
"""What ``mtpert --version`` reports besides mtpert: what a bug report needs."""

app = typer.Typer(
    name="mtpert",
    help="Multi-task single-cell perturbation modeling: fit, predict, evaluate, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _print_version(asked: bool) -> None:
    """Print mtpert's version and those of what it runs on (read from package metadata, so
    nothing heavy is imported), then exit."""
    if not asked:
        return
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import mtpert

    def version_of(name: str) -> str:
        if name == "python":
            return platform.python_version()
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    console.print(f"mtpert {mtpert.__version__}", highlight=False)
    console.print(", ".join(f"{name} {version_of(name)}" for name in VERSIONS_OF), highlight=False)
    raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the versions of mtpert, Python, torch, anndata, scanpy and numpy."),
    ] = False,
) -> None:
    """Multi-task single-cell perturbation modeling: fit, predict, evaluate, benchmark."""
    fit_consoles_to_output()


app.add_typer(data.app, name="data")
app.command("fit")(fit.fit)
app.command("predict")(fit.predict)
app.command("evaluate")(evaluate.evaluate)
app.command("tune")(tune.tune)
app.command("benchmark")(benchmark.benchmark)
app.command("report")(benchmark.report)
app.add_typer(study.app, name="study")
app.command("demo")(demo.demo)
app.command("models")(models.models)
app.add_typer(peers.app, name="peers")
