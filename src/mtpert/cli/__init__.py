"""The ``mtpert`` command line. Each subcommand is a thin layer over one public function.

Heavy modules (scanpy, torch) are imported inside the commands, so ``mtpert --help`` is instant.
"""

import typer

from mtpert.cli import benchmark, data, demo, evaluate, models

app = typer.Typer(
    name="mtpert",
    help="Multi-task single-cell perturbation modeling: fit, predict, evaluate, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data.app, name="data")
app.command("benchmark")(benchmark.benchmark)
app.command("report")(benchmark.report)
app.command("demo")(demo.demo)
app.command("evaluate")(evaluate.evaluate)
app.command("models")(models.models)
