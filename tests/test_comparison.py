"""--method all: every installed cell into one folder, the comparison files, resuming, and the report command."""

from __future__ import annotations

import csv
import json

import pytest

from hf_peft_suite.cli import main
from hf_peft_suite.comparison import comparison_cells, recommended_settings
from hf_peft_suite.methods import METHODS, library_problem

pytestmark = pytest.mark.slow  # real processes or whole training runs

QUICK = ["--preset", "tiny", "--max_steps", "3", "--max_eval_samples", "24", "--eval_strategy", "no"]


def expected_cells():
    cells = {(name, "scratch") for name in METHODS}
    cells |= {(name, "library") for name, m in METHODS.items() if m.build_library and not library_problem(m)}
    return cells


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("compare") / "all"
    assert main([*QUICK, "--method", "all", "--output_dir", str(output_dir)]) == 0
    return output_dir


def test_every_installed_cell_runs_into_its_own_folder(comparison):
    cells, skipped = comparison_cells()
    assert set(cells) == expected_cells()
    for method, implementation in cells:
        results = json.loads((comparison / f"{method}-{implementation}" / "results.json").read_text())
        assert (results["method"], results["implementation"]) == (method, implementation)
        assert results["history"][-1]["eval_num_scored"] == 24
    for method, implementation, reason in skipped:  # e.g. AdapterHub beside transformers 5
        assert "install" in reason
        assert json.loads((comparison / f"{method}-{implementation}" / "error.json").read_text())["status"] == "skipped"


def test_comparison_files_list_every_cell_with_all_columns(comparison):
    rows = json.loads((comparison / "comparison.json").read_text())
    done = {(row["method"], row["implementation"]) for row in rows if row["status"] == "ok"}
    assert done == expected_cells()
    with (comparison / "comparison.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows)
    markdown = (comparison / "comparison.md").read_text()
    for title in ("trainable params", "% of total", "best accuracy", "macro-F1", "invalid rate", "train time (s)",
                  "train samples/s", "eval samples/s", "peak memory (MB)", "artifact size"):
        assert title in markdown
    assert (comparison / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    full = next(row for row in rows if row["method"] == "full")
    peft = [row for row in rows if row["method"] != "full" and row["status"] == "ok"]
    assert all(row["trainable_parameters"] < full["trainable_parameters"] for row in peft)
    assert all(row["artifact_size_bytes"] < full["artifact_size_bytes"] for row in peft)


def test_rerun_skips_finished_cells_and_redoes_failed_ones(comparison, capsys):
    cell = comparison / "lora-scratch"
    finished = {path: path.read_bytes() for path in comparison.glob("*/results.json") if path.parent != cell}
    (cell / "results.json").unlink()
    (cell / "error.json").write_text(json.dumps({"method": "lora", "implementation": "scratch", "error": "boom"}))
    assert main([*QUICK, "--method", "all", "--output_dir", str(comparison)]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == len(finished)
    assert (cell / "results.json").exists() and not (cell / "error.json").exists()
    assert all(path.read_bytes() == content for path, content in finished.items())


def test_a_failing_cell_is_listed_and_does_not_stop_the_others(tmp_path):
    output_dir = tmp_path / "broken"
    # LoRA targets that the tiny T5 does not have: the LoRA cells fail, the others run.
    assert main([*QUICK, "--method", "all", "--output_dir", str(output_dir), "--lora_target_modules", "qkv"]) == 0
    rows = {(row["method"], row["implementation"]): row for row in json.loads((output_dir / "comparison.json").read_text())}
    assert rows[("lora", "scratch")]["status"] == "failed"
    assert "qkv" in rows[("lora", "scratch")]["error"]
    assert rows[("full", "scratch")]["status"] == "ok"
    assert "lora / scratch failed" in (output_dir / "comparison.md").read_text()


def test_report_command_rebuilds_the_table_elsewhere(comparison, tmp_path, capsys):
    assert main(["report", str(comparison), "--output_dir", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "comparison.md").read_text() == (comparison / "comparison.md").read_text()


def test_report_on_a_folder_without_results_is_a_usage_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.json found" in capsys.readouterr().err


@pytest.mark.parametrize("method", list(METHODS))
def test_recommended_settings_cite_a_source_and_agree_with_the_method_default(method):
    settings = recommended_settings(method)
    assert len(METHODS[method].recommended.source) > 40
    assert settings["learning_rate"] == METHODS[method].default_learning_rate
