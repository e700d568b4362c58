"""The option reference of every command, generated from their ``--help`` (``docs/cli.md``).

``python -m flyt_datacomp.cli.reference > docs/cli.md`` rewrites it; a test checks that the file
matches, so the reference cannot drift from the commands.
"""

from __future__ import annotations

import click

from . import main

WIDTH = 100  # help text is wrapped at this width, whatever the terminal


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    yield path, group
    for name in sorted(group.commands):
        cmd = group.commands[name]
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def render() -> str:
    """The whole reference as Markdown."""
    parts = ["# Command reference", "",
             "Generated from each command's `--help` by `python -m flyt_datacomp.cli.reference > docs/cli.md`;",
             "the flags follow one vocabulary (`flyt_datacomp/cli/options.py`).", ""]
    for path, cmd in _commands(main):
        name = " ".join(("flyt-datacomp", *path))
        ctx = cmd.make_context(name, [], resilient_parsing=True, terminal_width=WIDTH, max_content_width=WIDTH)
        parts += [f"## `{name}`", "", "```text", cmd.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
