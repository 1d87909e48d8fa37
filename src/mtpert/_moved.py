"""Modules that moved: their old paths keep working for one release, with a warning."""

import warnings


def warn_moved(old: str, instead: str) -> None:
    """Warn, from the module ``old`` as it is imported, that it is deprecated and what to import
    ``instead``; the warning points at the line that imported it."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; {instead}.",
        DeprecationWarning,
        stacklevel=3,  # past this function and the old module's body: the importing line
    )
