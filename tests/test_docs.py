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


def test_a_newcomer_finds_the_set_up_steps_the_two_commands_leave_out():
    """A CPU-only machine installs torch's CPU wheels first, a system Python needs a venv, the demo's
    figures vary with the thread count, and DataComp's checkout and environment have their steps."""
    readme = (ROOT / "README.md").read_text()
    install = (ROOT / "docs" / "install.md").read_text()
    evaluation = (ROOT / "docs" / "evaluation.md").read_text()
    for text in (readme, install):
        assert "--index-url https://download.pytorch.org/whl/cpu" in text.replace("\n", " ")
        assert "python3 -m venv .venv" in text and "externally-managed-environment" in text
    assert "vary slightly with torch's thread count" in readme.replace("\n", " ")
    for step in ("git clone https://github.com/mlfoundations/datacomp.git", "conda env create -f",
                 "environment.yml", "download_evalsets.py", "DATACOMP_PYTHON=$(conda run -n datacomp"):
        assert step in evaluation, step
    assert "docs/evaluation.md#getting-datacomp-and-its-environment" in readme
