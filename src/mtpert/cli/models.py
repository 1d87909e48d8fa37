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
    # The registry is read without importing the models (nor torch): names, options and
    # descriptions are declared or read from the sources; plugins are imported to be listed.
    from mtpert.models.registry import CROSSMODAL_MODELS, MODELS, ModelPreset
    from mtpert.plugins import class_description, class_name

    by_class: dict[str, list[ModelPreset]] = {}
    for preset in MODELS.values():
        by_class.setdefault(preset.class_path, []).append(preset)
    table = Table("model", "options set (others: the class defaults)", box=None, show_edge=False, pad_edge=False)
    for presets in by_class.values():
        table.add_section()
        table.add_row(f"[bold]{escape(presets[0].class_name)}[/]", escape(presets[0].description))
        for preset in presets:
            options = [f"{k}={v}" for k, v in preset.params.items()]
            if preset.one_dose_at_a_time:
                options.append(ONE_DOSE)
            shown = escape(", ".join(options)) or "[dim](class defaults)[/]"
            table.add_row(f"  {escape(preset.name)}", shown)
    console.print(table)
    console.print(
        f"{len(MODELS)} models. On data with doses, a model marked '{ONE_DOSE}' is fitted on the control cells and "
        "one dose per fit, as it was published. Change any option with `mtpert fit --set KEY=VALUE`."
    )
    crossmodal = Table("cross-modal model", "class: what it does", box=None, show_edge=False, pad_edge=False)
    for name in CROSSMODAL_MODELS:
        path = CROSSMODAL_MODELS.path(name)
        crossmodal.add_row(escape(name), escape(f"{class_name(path)}: {class_description(path)}"))
    console.print()
    console.print(crossmodal)
    console.print(
        f"{len(CROSSMODAL_MODELS)} cross-modal models predict one modality of a cell from another "
        "(in Python: mtpert.models.get_crossmodal(NAME)(**options).fit(source, target))."
    )
