"""The documentation stays true to the code: the command reference is the commands' own --help."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_command_reference_matches_the_commands():
    from flyt_datacomp.cli.reference import render

    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == render(), "docs/cli.md is stale: run `python -m flyt_datacomp.cli.reference > docs/cli.md`"


def test_readme_is_the_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    setup = readme.split("## Set up", 1)[1].split("```", 2)[1]
    commands = [line for line in setup.splitlines()[1:] if line.strip()]
    assert len(commands) == 2 and "pip install" in commands[0] and "pytest" in commands[1]
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()


def test_every_condition_in_an_example_is_quoted_for_the_shell():
    """An unquoted `--mask NAME>=V` makes the shell write a file named `=V` and pass only NAME."""
    import re

    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "baselines").glob("*.sh")),
             *sorted((ROOT / "eval").glob("*.sh"))]
    unquoted = [(p.name, m.group(0)) for p in texts for m in re.finditer(r"--mask[ =]([^'\"\s`][^\s`]*)", p.read_text())
                if re.search(r"[<>]", m.group(1))]
    assert not unquoted, unquoted
