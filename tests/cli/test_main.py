"""The ``celltype`` entry point loads only the module of the command it runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cli.main
from cli.main import COMMAND_MODULES, COMMANDS, build_parser, modules_for


def registered(module: str) -> set[str]:
    """Subcommand names ``module``'s ``add_commands`` registers."""
    parser = build_parser([module])
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices)


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_the_command_map_names_every_command_of_each_module(module):
    assert registered(module) == {name for name, owner in COMMANDS.items() if owner == module}


def test_a_known_command_loads_its_module_only_and_anything_else_loads_all():
    assert modules_for(["score", "x.h5ad"]) == ("service.score_cli",)
    assert modules_for(["--help"]) == COMMAND_MODULES
    assert modules_for([]) == COMMAND_MODULES
    assert modules_for(["trian"]) == COMMAND_MODULES


def test_celltype_score_does_not_import_the_training_stack():
    code = "import sys, cli.main as m; m.build_parser(m.modules_for(['score'])); print(sorted({n.split('.')[0] for n in sys.modules if n.startswith(('training', 'matplotlib'))}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_command_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main.main(["trian"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert all(name in err for name in COMMANDS)
