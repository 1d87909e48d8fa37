"""MkDocs hooks: the CLI page gets the help of every ``mtpert`` command when the site is built (so
it cannot go stale), and Sphinx roles in docstrings (``:func:`x` ``) render as plain code."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

CLI_PLACEHOLDER = "<!-- mtpert-help -->"
SPHINX_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj):(<code>)")


def on_page_markdown(markdown: str, page, **_) -> str:
    """Replace the placeholder on the CLI page with one section per command."""
    if CLI_PLACEHOLDER not in markdown:
        return markdown
    from mtpert.cli import app

    runner = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})
    sections = _help_sections(app, runner, typer.main.get_command(app), [])
    return markdown.replace(CLI_PLACEHOLDER, "\n".join(sections))


def on_page_content(html: str, page, **_) -> str:
    """Drop the role of ``:func:`name` `` in rendered docstrings, keeping ``name`` as code."""
    return SPHINX_ROLE.sub(r"\1", html)


def _help_sections(app: typer.Typer, runner: CliRunner, command, path: list[str]) -> list[str]:
    """A heading and the ``--help`` text of ``command``, then those of its subcommands."""
    result = runner.invoke(app, [*path, "--help"])
    if result.exit_code != 0:
        raise RuntimeError(f"`mtpert {' '.join(path)} --help` failed:\n{result.output}")
    text = "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())
    sections = [f"## `{' '.join(['mtpert', *path])}`\n\n```text\n{text}\n```\n"]
    if hasattr(command, "list_commands"):  # a group: its subcommands in turn
        context = command.context_class(command)
        for name in command.list_commands(context):
            sections += _help_sections(
                app, runner, command.get_command(context, name), [*path, name]
            )
    return sections
