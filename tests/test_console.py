"""The run as a person follows it: the cell counter, the per-epoch table, progress bars on a terminal, figures, quiet
libraries (one process and two), and ``--verbose`` or the libraries' own settings bringing their logs back."""

from __future__ import annotations

import json
import re
import sys

import pytest

from hf_peft_suite.cli import main
from hf_peft_suite.comparison import comparison_cells

from .conftest import readme_python_example
from .helpers import TWO_PROCESS_BATCH_WARNING

# What a normal run must not print: the warnings the libraries gave before, their progress bars, Trainer's log dicts.
NOISE = ("max_new_tokens", "find_unused_parameters", "is_gradient_checkpointing", "PAD/BOS/EOS", "past_key_value",
         "adapters available", "Tokenizing", "Flattening", "Writing model shards", "Warning", "warn(", "{'loss'",
         "{'eval_loss'", "{'train_runtime'")
PNG = b"\x89PNG\r\n\x1a\n"


def assert_quiet(*outputs: str) -> None:
    for output in outputs:
        found = [noise for noise in NOISE if noise in output]
        assert not found, (found, output[-3000:])


@pytest.mark.slow
def test_main_job_counts_cells_draws_figures_and_prints_no_library_noise(main_job):
    """The README's main job, ``python run_experiment.py --preset tiny --method all``, as a real process (the
    session's ``main_job``: test_methods_train.py checks what its cells learned)."""
    result, output_dir = main_job
    assert result.returncode == 0, result.stderr[-3000:]
    cells, _ = comparison_cells()
    starts = re.findall(r"^cell (\d+)/(\d+): (\w+)/(\w+) -> .* \((\d+:\d\d) elapsed(, about \d+:\d\d left)?\)$",
                        result.stdout, flags=re.M)
    assert [(int(k), int(n), (m, i)) for k, n, m, i, _, _ in starts] == [
        (k, len(cells), cell) for k, cell in enumerate(cells, start=1)]
    assert not starts[0][5] and all(estimate for *_, estimate in starts[1:])  # an estimate once a cell has finished
    assert re.search(rf"^{len(cells)} cells in \d+:\d\d \({len(cells)} trained", result.stdout, flags=re.M)
    assert result.stdout.count("  epoch  train_loss  valid_acc") == len(cells)  # each cell's table, row by row
    assert result.stderr == ""
    assert_quiet(result.stdout)
    for name in ("comparison.png", "learning_curves.png", *(f"{m}-{i}/learning_curves.png" for m, i in cells)):
        assert (output_dir / name).read_bytes()[:8] == PNG, name
    assert f"{output_dir / 'comparison.png'}, {output_dir / 'learning_curves.png'}" in result.stdout


@pytest.mark.slow
def test_python_api_example_of_the_readme_is_quiet(readme_example):
    """The README's Python example, as written, in a fresh interpreter: its table and nothing on stderr."""
    result, run_dir = readme_example
    assert "run_experiment(preset=\"tiny\"" in readme_python_example()
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    assert_quiet(result.stdout)
    assert "best valid_acc" in result.stdout and (run_dir / "learning_curves.png").is_file()


def test_library_output_is_quiet_inside_a_run_and_restored_after_it():
    import datasets
    from transformers.utils import logging as transformers_logging

    from hf_peft_suite.quiet import library_output

    transformers_logging.set_verbosity_info()
    transformers_logging.enable_progress_bar()
    datasets.enable_progress_bars()
    try:
        with library_output(verbose=False):
            assert transformers_logging.get_verbosity() == transformers_logging.ERROR
            assert not datasets.is_progress_bar_enabled() and not transformers_logging.is_progress_bar_enabled()
        assert transformers_logging.get_verbosity() == transformers_logging.INFO
        assert datasets.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()
        with library_output(verbose=True):
            assert transformers_logging.get_verbosity() == transformers_logging.WARNING
    finally:
        transformers_logging.set_verbosity_warning()


def test_the_libraries_own_settings_win_over_quiet(monkeypatch):
    """TRANSFORMERS_VERBOSITY, HF_DATASETS_VERBOSITY and Python's -W keep what they ask for inside a quiet run."""
    import warnings

    import datasets
    from transformers.utils import logging as transformers_logging

    from hf_peft_suite.quiet import library_output

    def shown_inside_a_quiet_run(message: str) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # what -W always (or a Python without pytest's filters) shows
            with library_output(verbose=False):
                warnings.warn(message, FutureWarning)
        return [str(warning.message) for warning in caught]

    assert shown_inside_a_quiet_run("hidden") == []
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    monkeypatch.setenv("HF_DATASETS_VERBOSITY", "info")
    monkeypatch.setattr(sys, "warnoptions", ["always"])
    transformers_logging.set_verbosity_info()
    datasets.logging.set_verbosity_info()
    try:
        assert shown_inside_a_quiet_run("still shown") == ["still shown"]
        with library_output(verbose=False):
            assert transformers_logging.get_verbosity() == transformers_logging.INFO
            assert datasets.logging.get_verbosity() == datasets.logging.INFO
    finally:
        transformers_logging.set_verbosity_warning()
        datasets.logging.set_verbosity_warning()


@pytest.mark.slow
def test_verbose_brings_the_libraries_logs_back(tmp_path, capfd):
    """``--verbose`` is read by the command, so it runs in this process: datasets' progress bars and logs are back."""
    argv = ["--preset", "tiny", "--max_steps", "2", "--max_eval_samples", "16", "--output_dir", tmp_path / "run",
            "--verbose"]
    assert main([str(item) for item in argv]) == 0
    assert "Tokenizing" in capfd.readouterr().err


@pytest.mark.slow
def test_transformers_own_verbosity_setting_wins(transformers_verbosity_info):
    """``TRANSFORMERS_VERBOSITY`` is read by transformers when a process imports it, so that case is a new process
    (the session's ``transformers_verbosity_info``: the same run started with ``TRANSFORMERS_VERBOSITY=info``)."""
    result, _ = transformers_verbosity_info
    assert result.returncode == 0, result.stderr[-3000:]
    assert "***** Running training *****" in result.stderr


@pytest.mark.slow
def test_two_processes_every_cell_is_quiet_and_counted_once(torchrun_every_cell):
    """torchrun, two gloo processes, every cell (DDP with find_unused_parameters off): on stderr only the line that
    says the global batch is twice the preset's, once for all cells, and the counter and the tables printed by the
    first process only. (test_distributed.py checks its scores.)"""
    result, output_dir = torchrun_every_cell
    assert result.returncode == 0, result.stderr[-3000:]
    cells, _ = comparison_cells()
    assert result.stderr.splitlines() == [TWO_PROCESS_BATCH_WARNING]
    assert_quiet(result.stdout)
    assert result.stdout.count("cell 1/") == 1 and result.stdout.count("best valid_acc") == len(cells)
    rows = json.loads((output_dir / "comparison.json").read_text())
    assert sorted((row["method"], row["implementation"]) for row in rows if row["status"] == "ok") == sorted(cells)


@pytest.mark.slow
def test_accelerate_launch_is_quiet(accelerate_lora_library):
    """accelerate launch, two CPU processes, peft's LoRA cell (test_distributed.py checks its scores)."""
    result, _ = accelerate_lora_library
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.splitlines() == [TWO_PROCESS_BATCH_WARNING]
    assert_quiet(result.stdout)


@pytest.mark.slow
def test_on_a_terminal_training_and_evaluation_draw_progress_bars(terminal_run):
    """The tiny preset, 30 steps evaluated twice, in a process whose stdin, stdout and stderr are a terminal (the
    session's ``terminal_run``, on a pseudo-terminal of 120 x 40)."""
    result, _ = terminal_run
    screen = result.stdout
    assert result.returncode == 0, screen[-3000:]
    assert re.search(r"full/scratch training: +\d+%\|", screen), screen[-2000:]
    assert re.search(r"full/scratch evaluation: +\d+%\|", screen), screen[-2000:]
    assert "  epoch  train_loss  valid_acc" in screen and "best valid_acc" in screen
    assert_quiet(screen)


def test_an_evaluation_row_per_epoch_and_the_cell_counter_estimate(capsys):
    from transformers import TrainerState

    from hf_peft_suite.progress import CellCounter, ConsoleProgress

    console = ConsoleProgress("lora/scratch on t5-small", "lora/scratch")
    state = TrainerState(epoch=1.0, global_step=63, max_steps=252, is_world_process_zero=True)
    console.on_log(None, state, None, logs={"loss": 0.3536, "learning_rate": 0.01})
    console.on_evaluate(None, state, None, metrics={"eval_accuracy": 0.9625, "eval_macro_f1": 0.9624,
                                                    "eval_invalid_rate": 0.0, "eval_loss": 0.0728})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_acc", "macro_f1", "invalid", "eval_loss", "step", "time"]
    assert lines[1].split()[:7] == ["1", "0.3536", "0.9625", "0.9624", "0.0000", "0.0728", "63/252"]

    counter = CellCounter(3)
    counter.finished_earlier("full/scratch", "out/full-scratch/results.json")
    counter.start("lora/scratch", "out/lora-scratch")
    counter.cell_started -= 30  # as if it took 30 s
    counter.done(ok=True)
    counter.start("lora/library", "out/lora-library")
    out = capsys.readouterr().out
    assert "cell 1/3: full/scratch: finished earlier" in out and "cell 3/3: lora/library -> out/lora-library" in out
    assert re.search(r"cell 3/3: .*elapsed, about 0:30 left\)", out)  # one cell left, 30 s each


def test_evaluate_prints_its_metrics_once_without_a_raw_log_dict(tmp_path, capsys):
    from hf_peft_suite import run_experiment

    run_experiment(preset="tiny", max_steps=2, max_eval_samples=16, output_dir=str(tmp_path / "run"))
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--output_dir", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "{'eval" not in out and json.loads(out[:out.index("\nwritten: ")])["eval_num_scored"] == 16


def test_the_early_verbose_lookup_reads_the_flag_as_the_parser_does():
    from transformers.hf_argparser import string_to_bool

    from hf_peft_suite.cli import _verbose_flag

    for value in ("yes", "true", "t", "y", "1", "True", "no", "false", "f", "n", "0", "NO"):
        assert _verbose_flag(["--verbose", value]) == string_to_bool(value), value
        assert _verbose_flag([f"--verbose={value}"]) == string_to_bool(value), value
    assert _verbose_flag(["--method", "lora", "--verbose"]) is True
    assert _verbose_flag(["--verbose", "--method", "lora"]) is True
    assert _verbose_flag(["--method", "lora"]) is False
