"""The `finegrain` command: cheap to import, --help on every subcommand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from finegrain.cli import build_parser, main


def _subcommand_paths(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommand_paths(sub, (*prefix, name))


def test_import_is_cheap():
    code = "import sys, finegrain, finegrain.cli; finegrain.cli.build_parser(); print(sorted(m for m in ('torch', 'transformers', 'sklearn', 'fastapi', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("path", list(_subcommand_paths(build_parser())), ids=" ".join)
def test_help_on_every_subcommand(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    assert "usage: finegrain" in capsys.readouterr().out


def test_group_without_subcommand_shows_help(capsys):
    with pytest.raises(SystemExit):
        main(["data"])
    assert "check" in capsys.readouterr().out
