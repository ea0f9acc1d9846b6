"""The command table: each command declares its own arguments, and help imports no heavy library."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import hst.cli
from hst.cli import COMMANDS, GROUPS, build_parser

HEAVY = ("torch", "matplotlib", "lightning", "flask")


def _subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    for word in words:
        choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        parser = choices[word]
    return parser


def _declared(parser: argparse.ArgumentParser) -> list[tuple[object, ...]]:
    return [(tuple(a.option_strings), a.dest, a.nargs, a.default, a.required, a.help) for a in parser._actions]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_declares_its_arguments_in_its_own_module(name: str) -> None:
    command = importlib.import_module(COMMANDS[name])
    assert isinstance(command.HELP, str) and callable(command.run)
    own = argparse.ArgumentParser()
    command.add_arguments(own)
    assert _declared(_subparser(build_parser(), name.split())) == _declared(own)


def test_cli_declares_no_command_arguments() -> None:
    # Arguments live with the code that reads them; the CLI only holds the table.
    assert "add_argument(" not in Path(hst.cli.__file__).read_text()
    assert set(GROUPS) == {name.split()[0] for name in COMMANDS if " " in name}


def test_help_imports_no_heavy_library() -> None:
    script = (
        "import sys\n"
        "from hst.cli import COMMANDS, GROUPS, main\n"
        "for words in [[], *([g] for g in GROUPS), *(name.split() for name in COMMANDS)]:\n"
        "    try:\n"
        "        main([*words, '--help'])\n"
        "    except SystemExit as stop:\n"
        "        assert stop.code == 0, words\n"
        f"print(sorted({{n.split('.')[0] for n in sys.modules}} & {set(HEAVY)!r}), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "[]"
    assert "usage: hst" in out.stdout


def test_architecture_doc_shows_the_command_table() -> None:
    # docs/architecture.md quotes the table; a command added here must appear there too.
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    assert all(f'    "{name}": "{module}",' in doc for name, module in COMMANDS.items())
