"""`gencycle VERB` imports only the module that registers VERB; the verb table matches what the
modules register."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from gencycle.cli import COMMAND_MODULES, VERBS, main


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_the_verb_table_names_what_each_module_registers(module):
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    importlib.import_module(module).register(subparsers)
    assert set(subparsers.choices) == {verb for verb, name in VERBS.items() if name == module}


def test_generate_imports_no_other_stage():
    code = ("import sys; from gencycle.cli import build_parser; build_parser('generate'); "
            "print(sorted(m for m in ('gencycle.serve', 'gencycle.evaluation', 'gencycle.integrate', "
            "'gencycle.alignment', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_verb_lists_every_verb(capsys):
    assert main(["bogus"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err and all(f"'{verb}'" in err for verb in VERBS)
