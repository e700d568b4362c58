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
        ctx = _context(path)
        parts += [f"## `{name}`", "", "```text", cmd.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(parts)


def _context(path: tuple[str, ...]) -> click.Context:
    """The context a command has when run as ``flyt-datacomp PATH...``: under its parents' contexts,
    whose settings (the help flags ``-h``/``--help``) it inherits, as on the command line. (Click
    caches a command's help option once made, so a context without them would make the reference
    depend on which commands had run before in the same process.)"""
    ctx, cmd = None, main
    for depth in range(len(path) + 1):
        if depth:
            cmd = cmd.commands[path[depth - 1]]
        ctx = cmd.make_context(path[depth - 1] if depth else "flyt-datacomp", [], parent=ctx,
                               resilient_parsing=True, terminal_width=WIDTH, max_content_width=WIDTH)
    return ctx


if __name__ == "__main__":
    print(render(), end="")
