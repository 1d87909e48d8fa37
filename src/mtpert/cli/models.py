"""``mtpert models``: the registered models, grouped by class, each with what sets it apart."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from mtpert.cli.options import console

ONE_DOSE = "one dose at a time"
"""Shown for presets the benchmark fits once per dose (``ModelPreset.one_dose_at_a_time``)."""


def models() -> None:
    """List the registered models: per class, what it does, then each preset's own options.

    A preset is its class with a few options set; pass any other option with
    `mtpert fit --set KEY=VALUE`, or model_params in a benchmark config.
    """
    from mtpert.models.crossmodal import CROSSMODAL_MODELS
    from mtpert.models.registry import get_model, list_models
    from mtpert.plugins import first_line

    table = Table("model", "options set (others: the class defaults)", box=None, show_edge=False, pad_edge=False)
    presets = list_models()
    for (cls, description), members in presets.groupby(["class", "description"], sort=False):
        table.add_section()
        table.add_row(f"[bold]{escape(cls)}[/]", escape(description))
        for name, row in members.iterrows():
            options = [f"{k}={v}" for k, v in row["options"].items()]
            if get_model(str(name)).one_dose_at_a_time:
                options.append(ONE_DOSE)
            table.add_row(f"  {escape(str(name))}", escape(", ".join(options)) or "[dim](class defaults)[/]")
    console.print(table)
    console.print(
        f"{len(presets)} models. On data with doses, a model marked '{ONE_DOSE}' is fitted on the control cells and "
        "one dose per fit, as it was published. Change any option with `mtpert fit --set KEY=VALUE`."
    )
    crossmodal = Table("cross-modal model", "class: what it does", box=None, show_edge=False, pad_edge=False)
    for name, cls in CROSSMODAL_MODELS.items():
        crossmodal.add_row(escape(name), escape(f"{cls.__name__}: {first_line(cls.__doc__)}"))
    console.print()
    console.print(crossmodal)
    console.print(
        f"{len(CROSSMODAL_MODELS)} cross-modal models predict one modality of a cell from another "
        "(in Python: mtpert.models.get_crossmodal(NAME)(**options).fit(source, target))."
    )
