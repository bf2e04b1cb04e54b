"""The short ``--help`` (fast, one screen, every subcommand and project flag), ``--help_all``, and subcommand help."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_peft_suite.cli import SUBCOMMANDS, main

from .conftest import REPO_ROOT
from .helpers import cli_environment


def test_short_help_is_fast_short_and_lists_the_projects_flags():
    timings = []
    for _ in range(3):  # the best of three: the command alone, not whatever else this machine is doing
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "run_experiment.py", "--help"], cwd=REPO_ROOT,
                                env=cli_environment(), capture_output=True, text=True, timeout=60)
        timings.append(time.perf_counter() - started)
        assert result.returncode == 0 and result.stderr == ""
    assert min(timings) < 3.0, timings  # it imports neither torch nor transformers (0.1 s on a quiet machine)
    lines = result.stdout.splitlines()
    assert len(lines) < 150
    from hf_peft_suite.arguments import DataArguments, ExperimentArguments, ModelArguments
    from hf_peft_suite.help import TRAINING_FLAGS
    from hf_peft_suite.methods import METHODS

    project = [ModelArguments, DataArguments, ExperimentArguments, *(m.options for m in METHODS.values() if m.options)]
    for name in [f.name for cls in project for f in dataclasses.fields(cls)] + list(TRAINING_FLAGS):
        assert re.search(rf"^  --{name}\b", result.stdout, flags=re.M), name
    assert "--method {" + ",".join([*METHODS, "all"]) + "}" in result.stdout
    assert "--help_all" in result.stdout


CONSOLE_SCRIPT = Path(sys.executable).parent / "hf-peft-suite"


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(),
                    reason=f"the package is not installed in this environment ({CONSOLE_SCRIPT} is absent)")
def test_the_installed_command_prints_the_short_help_as_fast():
    """``hf-peft-suite --help``: the console script imports hf_peft_suite_cli, not the package (whose __init__
    imports torch and transformers to register the methods: about 4 s here)."""
    command = CONSOLE_SCRIPT
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        result = subprocess.run([str(command), "--help"], env=cli_environment(), capture_output=True, text=True,
                                timeout=60)
        timings.append(time.perf_counter() - started)
        assert result.returncode == 0 and result.stderr == ""
    assert min(timings) < 3.0, timings
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\b", result.stdout, flags=re.M), name


def test_short_help_file_is_rendered_from_the_current_flags_and_installed_with_the_package():
    import configparser

    from hf_peft_suite.help import HELP_FILE, render_short_help

    assert HELP_FILE.read_text() == render_short_help(), "help.txt is out of date: python -m hf_peft_suite.help --write"
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    assert "help.txt" in config["options.package_data"]["hf_peft_suite"]


def test_hf_peft_suite_help_lists_every_subcommand_with_one_line(capsys):
    from hf_peft_suite.help import SUBCOMMANDS as LISTED

    assert set(LISTED) == set(SUBCOMMANDS)  # so that `SUBCOMMAND --help` reaches the subcommand
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert len(re.findall(rf"^  {name} .*\n {{30,}}\S", out, flags=re.M)) == 1, name


def test_help_all_lists_every_training_flag(capsys):
    from transformers import Seq2SeqTrainingArguments

    assert main(["--help_all"]) == 0
    out = capsys.readouterr().out
    for field in dataclasses.fields(Seq2SeqTrainingArguments):
        if field.init and not field.name.startswith("_"):
            assert f"--{field.name}" in out, field.name
    assert "or all: every installed method" in " ".join(out.split())


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_subcommand_help_shows_no_restructuredtext_markup(command, capsys):
    try:
        code = main([command, "--help"])
    except SystemExit as exit:  # argparse's own --help
        code = exit.code
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-peft-suite") and "``" not in out
