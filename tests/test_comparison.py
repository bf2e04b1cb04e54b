"""--method all: every installed cell into one folder, the comparison files, resuming, and the report command.

The complete comparison is the session's ``main_job`` (conftest.py; copied before a test writes into it); the other
comparisons here train 3 steps per cell. Tests that train are marked slow.
"""

from __future__ import annotations

import csv
import json

import pytest

from hf_peft_suite.cli import main
from hf_peft_suite.comparison import comparison_cells, recommended_settings
from hf_peft_suite.methods import METHODS, library_problem

QUICK = ["--preset", "tiny", "--max_steps", "3", "--max_train_samples", "96", "--max_eval_samples", "24",
         "--eval_strategy", "no"]
TINY_EVAL_EXAMPLES = 400  # the tiny preset's whole evaluation split, which the main job scores


def expected_cells():
    cells = {(name, "scratch") for name in METHODS}
    cells |= {(name, "library") for name, m in METHODS.items() if m.build_library and not library_problem(m)}
    return cells


@pytest.fixture(scope="session")
def comparison(main_job):
    """The main job's folder: every installed cell and the comparison files. Read only."""
    assert main_job.result.returncode == 0, main_job.result.stderr[-3000:]
    return main_job.output_dir


@pytest.mark.slow
def test_every_installed_cell_runs_into_its_own_folder(comparison):
    cells, skipped = comparison_cells()
    assert set(cells) == expected_cells()
    for method, implementation in cells:
        results = json.loads((comparison / f"{method}-{implementation}" / "results.json").read_text())
        assert (results["method"], results["implementation"]) == (method, implementation)
        assert results["history"][-1]["eval_num_scored"] == TINY_EVAL_EXAMPLES
    for method, implementation, reason in skipped:  # e.g. AdapterHub beside transformers 5
        assert "install" in reason
        assert json.loads((comparison / f"{method}-{implementation}" / "error.json").read_text())["status"] == "skipped"


@pytest.mark.slow
def test_comparison_files_list_every_cell_with_all_columns(comparison):
    rows = json.loads((comparison / "comparison.json").read_text())
    done = {(row["method"], row["implementation"]) for row in rows if row["status"] == "ok"}
    assert done == expected_cells()
    with (comparison / "comparison.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows)
    markdown = (comparison / "comparison.md").read_text()
    for title in ("trainable params", "% of total", "best accuracy", "macro-F1", "invalid rate", "processes",
                  "global batch", "train time (s)", "train samples/s", "eval samples/s", "peak memory (MB)",
                  "artifact size"):
        assert title in markdown
    assert {(row["world_size"], row["global_train_batch_size"]) for row in rows if row["status"] == "ok"} == {(1, 32)}
    assert (comparison / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    full = next(row for row in rows if row["method"] == "full")
    peft = [row for row in rows if row["method"] != "full" and row["status"] == "ok"]
    assert all(row["trainable_parameters"] < full["trainable_parameters"] for row in peft)
    assert all(row["artifact_size_bytes"] < full["artifact_size_bytes"] for row in peft)


@pytest.mark.slow
def test_rerun_skips_finished_cells_and_redoes_failed_ones(comparison, copy_run, capsys):
    comparison = copy_run(comparison)
    cell = comparison / "lora-scratch"
    finished = {path: path.read_bytes() for path in comparison.glob("*/results.json") if path.parent != cell}
    (cell / "results.json").unlink()
    (cell / "error.json").write_text(json.dumps({"method": "lora", "implementation": "scratch", "error": "boom"}))
    assert main([*QUICK, "--method", "all", "--output_dir", str(comparison)]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == len(finished)
    assert (cell / "results.json").exists() and not (cell / "error.json").exists()
    assert all(path.read_bytes() == content for path, content in finished.items())


@pytest.mark.slow
def test_a_failing_cell_is_listed_and_does_not_stop_the_others(tmp_path):
    output_dir = tmp_path / "broken"
    # LoRA targets that the tiny T5 does not have: the LoRA cells fail, the others run.
    # The scratch cells only, to keep it short: LoRA's fails, and the five others run.
    assert main([*QUICK, "--method", "all", "--implementation", "scratch", "--output_dir", str(output_dir),
                 "--lora_target_modules", "qkv", "--no_figures"]) == 0
    rows = {(row["method"], row["implementation"]): row for row in json.loads((output_dir / "comparison.json").read_text())}
    assert rows[("lora", "scratch")]["status"] == "failed"
    assert "qkv" in rows[("lora", "scratch")]["error"]
    assert rows[("full", "scratch")]["status"] == "ok"
    assert "lora / scratch failed" in (output_dir / "comparison.md").read_text()


@pytest.mark.slow
def test_report_command_rebuilds_the_table_elsewhere(comparison, tmp_path, capsys):
    assert main(["report", str(comparison), "--output_dir", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "comparison.md").read_text() == (comparison / "comparison.md").read_text()


def test_report_on_a_folder_without_results_is_a_usage_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.json found" in capsys.readouterr().err


# The learning rate each method's cited source gives, written down here from the source itself (not read from the
# registry): the recommended settings must use it, and their citation must state it.
CITED_LEARNING_RATES = {
    "full": (1e-5, "1e-5"),  # the reference notebook: AdamW at a constant 1e-5
    "prompt_tuning": (0.3, "0.3"),  # Lester et al. 2021: Adafactor at 0.3
    "adapter": (1e-4, "1e-4"),  # AdapterHub's training guide: 1e-4
    "lora": (5e-4, "5e-4"),  # the LoRA authors' roberta_base_mnli.sh: 5e-4
    "ia3": (3e-3, "3e-3"),  # Liu et al. 2022 (T-Few): Adafactor at 3e-3
    "prefix_tuning": (1e-2, "1e-2"),  # peft's seq2seq prefix-tuning example: 1e-2
}


def test_every_method_has_a_cited_learning_rate():
    assert set(CITED_LEARNING_RATES) == set(METHODS)


@pytest.mark.parametrize("method", list(METHODS))
def test_recommended_learning_rate_is_the_one_its_source_cites(method):
    settings, source = recommended_settings(method), METHODS[method].recommended.source
    rate, as_written = CITED_LEARNING_RATES[method]
    assert len(source) > 40
    assert settings["learning_rate"] == rate
    assert as_written in source, source


@pytest.mark.slow
def test_implementation_with_method_all_runs_only_that_implementations_cells(tmp_path, capsys):
    output_dir = tmp_path / "library"
    assert main([*QUICK, "--method", "all", "--implementation", "library", "--output_dir", str(output_dir),
                 "--no_figures"]) == 0
    cells, skipped = comparison_cells("library")
    assert {implementation for _, implementation in cells} == {"library"}
    assert sorted(path.parent.name for path in output_dir.glob("*/results.json")) == sorted(
        f"{method}-library" for method, _ in cells)
    assert "--implementation library: only its cells run" in capsys.readouterr().out
    rows = json.loads((output_dir / "comparison.json").read_text())
    assert {row["implementation"] for row in rows} == {"library"}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("seeds") / "all"
    assert main([*QUICK, "--method", "all", "--implementation", "scratch", "--seeds", "1", "2",
                 "--output_dir", str(output_dir)]) == 0
    return output_dir


@pytest.mark.slow
def test_seeds_run_every_cell_once_per_seed_and_report_mean_and_std(seeded):
    cells, _ = comparison_cells("scratch")
    for method, implementation in cells:
        for seed in (1, 2):
            results = json.loads((seeded / f"{method}-{implementation}" / f"seed-{seed}" / "results.json").read_text())
            assert results["config"]["training"]["seed"] == seed
            assert results["config"]["experiment"]["seeds"] is None  # each run is one seed
    rows = json.loads((seeded / "comparison.json").read_text())
    assert len(rows) == len(cells)
    for row in rows:
        per_seed = [run["best_accuracy"] for run in row["per_seed"]]
        assert row["seeds"] == [1, 2] and row["best_accuracy"] == pytest.approx(sum(per_seed) / 2)
        assert row["best_accuracy_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2 ** 0.5)
        assert row["train_runtime_s_std"] is not None
    assert " ± " in (seeded / "comparison.md").read_text()
    for name in ("comparison.png", "learning_curves.png"):
        assert (seeded / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_seeds_resume_finished_runs_and_redo_the_missing_one(seeded, capsys):
    missing = seeded / "lora-scratch" / "seed-2"
    finished = {path: path.read_bytes() for path in seeded.glob("*/seed-*/results.json") if path.parent != missing}
    (missing / "results.json").unlink()
    assert main([*QUICK, "--method", "all", "--implementation", "scratch", "--seeds", "1", "2",
                 "--output_dir", str(seeded)]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == len(finished)
    assert "lora/scratch seed 2 -> " in out and (missing / "results.json").is_file()
    assert all(path.read_bytes() == content for path, content in finished.items())


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "1", "2"], "--seeds repeats every cell of --method all over several seeds; for one run give --seed N"),
    (["--method", "all", "--seeds", "3", "3"], "--seeds 3 3 repeats a seed; give each seed once"),
])
def test_seeds_outside_the_comparison_or_repeated_are_refused(argv, message, tmp_path, capsys):
    assert main([*QUICK, *argv, "--output_dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "out").exists()
