"""A finished run used again: ``evaluate`` and ``predict`` (CLI and Python) for every cell, on its own and other data.

The finished runs are the session's (``finished_runs`` in conftest.py: the main job's run of every installed cell);
they are read here, never written into.
"""

from __future__ import annotations

import json
import re

import pytest

from hf_peft_suite import evaluate_run, load_run
from hf_peft_suite.cli import main
from hf_peft_suite.experiment import run_experiment

from .conftest import ALL_CELLS, TWO_PROCESS_EVALUATION, cell_param
from .helpers import loads_inside_main_process_first, read_results, write_split_files

pytestmark = pytest.mark.slow  # every cell is trained first

CELLS = [cell_param(*cell) for cell in ALL_CELLS]
REQUIRED_KEYS = {"eval_accuracy", "eval_macro_f1", "eval_invalid_rate", "eval_num_scored", "eval_loss",
                 "eval_runtime", "eval_samples_per_second"}


@pytest.mark.parametrize(("method", "implementation"), CELLS)
def test_evaluate_command_reproduces_the_runs_own_evaluation(method, implementation, finished_runs, tmp_path, capsys):
    run_dir = finished_runs[(method, implementation)]
    assert main(["evaluate", str(run_dir), "--output_dir", str(tmp_path / "eval")]) == 0
    written = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert REQUIRED_KEYS <= set(written)
    trained = read_results(run_dir)["final_metrics"]
    for key in ("eval_accuracy", "eval_macro_f1", "eval_invalid_rate", "eval_num_scored"):
        assert written[key] == trained[key]
    assert abs(written["eval_loss"] - trained["eval_loss"]) <= 1e-6
    # The same file, in the same format, as the training run's: the same prediction for every example.
    assert (tmp_path / "eval" / "eval_predictions.json").read_text() == (run_dir / "eval_predictions.json").read_text()
    assert "written: " in capsys.readouterr().out


def test_evaluate_on_other_data_from_python(finished_runs, tmp_path):
    rows = [{"review": "great fun and moving", "sentiment": "positive"}, {"review": "dull and boring", "sentiment":
            "negative"}] * 3 + [{"review": "superb", "sentiment": "positive"}]
    folder = write_split_files(tmp_path / "data", rows, rows)
    metrics = evaluate_run(finished_runs[("lora", "scratch")], output_dir=tmp_path / "eval",
                           eval_file=str(folder / "test.csv"), text_column="review", label_column="sentiment")
    assert metrics["eval_num_scored"] == 7 and REQUIRED_KEYS <= set(metrics)
    predictions = json.loads((tmp_path / "eval" / "eval_predictions.json").read_text())
    assert predictions["label_words"] == ["negative", "positive"]  # the run's own words, in its class order
    assert sorted(predictions["references"]) == [0, 0, 0, 1, 1, 1, 1]  # (in the length order of generation)


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_evaluate_under_two_processes_scores_as_one_process_does(launcher, two_process_evaluations, finished_runs,
                                                                   tmp_path):
    """``hf-peft-suite evaluate`` of the peft LoRA run by two processes (the session's ``two_process_evaluations``),
    against the same evaluation in this process."""
    result, two_dir = two_process_evaluations[launcher]
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((two_dir / "eval_results.json").read_text())
    assert two["world_size"] == 2 and two["eval_num_scored"] == TWO_PROCESS_EVALUATION["max_eval_samples"]
    one = evaluate_run(finished_runs[("lora", "library")], output_dir=tmp_path / "one", **TWO_PROCESS_EVALUATION)
    assert one["eval_accuracy"] == two["eval_accuracy"] and abs(one["eval_loss"] - two["eval_loss"]) <= 1e-5
    assert (two_dir / "eval_predictions.json").read_text() == (tmp_path / "one" / "eval_predictions.json").read_text()


@pytest.mark.parametrize(("method", "implementation"), CELLS)
def test_predict_prints_the_label_word_the_run_writes(method, implementation, finished_runs, capsys):
    run_dir = finished_runs[(method, implementation)]
    texts = ["A wonderful, moving film<br />with a superb cast", "dull and tedious, an awful plot"]
    assert main(["predict", str(run_dir), *texts]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    expected = load_run(run_dir).predict(texts)
    assert printed == [f"{p.label if p.valid else 'invalid (wrote ' + repr(p.output) + ')'}\t{p.text}"
                       for p in expected]


def test_predict_shows_an_output_that_is_no_label_word_as_invalid(tmp_path, capsys):
    run_dir = tmp_path / "untrained"
    run_experiment(preset="tiny", max_steps=1, learning_rate=1e-12, max_eval_samples=8, output_dir=str(run_dir))
    capsys.readouterr()  # the training run's own output
    assert main(["predict", str(run_dir), "the movie was great"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("invalid (wrote '") and line.endswith("')\tthe movie was great"), line


def test_predict_a_file_writes_predictions_beside_a_summary(finished_runs, tmp_path, capsys):
    run_dir = finished_runs[("full", "scratch")]
    rows = [{"text": "great fun", "id": 1}, {"text": "awful and boring", "id": 2}, {"text": "superb acting", "id": 3}]
    folder = write_split_files(tmp_path / "in", rows, rows, suffix=".jsonl")
    assert main(["predict", str(run_dir), "--input_file", str(folder / "train.jsonl"), "--output_dir",
                 str(tmp_path / "out")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    expected = load_run(run_dir).predict([row["text"] for row in rows])
    assert [(line["index"], line["text"], line["label"]) for line in lines] == \
        [(index, p.text, p.label) for index, p in enumerate(expected)]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_texts"] == 3 and sum(summary["label_counts"].values()) + summary["invalid"] == 3
    assert json.loads(capsys.readouterr().out) == summary


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate"], "evaluate needs the folder of a finished run"),
        (["evaluate", "{empty}"], "holds no finished run"),
        (["evaluate", "{run}", "--train_file", "x.csv"], "evaluate uses no training data: leave out --train_file"),
        (["evaluate", "{run}", "--max_eval_sampels", "3"], "unrecognized arguments"),
        (["evaluate", "{run}", "--output_dir", "{run}"], "is not empty"),
        (["predict", "{run}"], "give texts to label, or --input_file FILE"),
        (["predict", "{run}", "--input_file", "{empty}/missing.csv"], "input file .* does not exist"),
        (["predict", "{empty}", "great"], "holds no finished run"),
    ],
    ids=["evaluate-no-run", "evaluate-not-a-run", "evaluate-training-flag", "evaluate-typo", "evaluate-used-folder",
         "predict-nothing", "predict-missing-file", "predict-not-a-run"],
)
def test_mistakes_are_one_error_line(argv, message, finished_runs, tmp_path, capsys):
    run_dir = finished_runs[("lora", "scratch")]
    before = sorted(path.name for path in run_dir.rglob("*"))
    argv = [item.format(run=run_dir, empty=tmp_path) for item in argv]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: ") and re.search(message, error), error
    assert sorted(path.name for path in run_dir.rglob("*")) == before


def test_evaluate_refuses_several_gpus_in_one_process(finished_runs, tmp_path, capsys, monkeypatch):
    """As a run does (tests/test_engines.py): Trainer would evaluate through nn.DataParallel (n_gpu made to report 4)."""
    from hf_peft_suite.arguments import TrainingArguments

    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 4))
    assert main(["evaluate", str(finished_runs[("lora", "scratch")]), "--output_dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert re.fullmatch(r"error: this process sees 4 GPUs, .*CUDA_VISIBLE_DEVICES=0 python run_experiment\.py \.\.\.",
                        error), error
    assert not (tmp_path / "out").exists()


def test_evaluate_loads_the_data_inside_main_process_first(finished_runs, monkeypatch, tmp_path):
    """As a run does (tests/test_engines.py): under several processes only process 0 reads and tokenizes first."""
    from hf_peft_suite import runs

    seen = loads_inside_main_process_first(monkeypatch, runs, "load_eval_data")
    evaluate_run(finished_runs[("lora", "scratch")], output_dir=tmp_path / "eval", max_eval_samples=16)
    assert seen == [True]


def test_predict_a_file_whose_rows_are_not_all_text_is_one_error_line(finished_runs, tmp_path, capsys):
    run_dir = finished_runs[("lora", "scratch")]
    empty_row = tmp_path / "reviews.csv"
    empty_row.write_text('text\ngreat film\n"   "\n')
    number_row = tmp_path / "reviews.jsonl"
    number_row.write_text('{"text": 3}\n{"text": 4}\n')
    for path, message in ((empty_row, r"1 rows of .*reviews\.csv have an empty 'text' \(the first is row 1"),
                          (number_row, r"reviews\.jsonl's column 'text' holds int values, not text \(row 0: 3\)")):
        assert main(["predict", str(run_dir), "--input_file", str(path), "--output_dir", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and re.search(message, error), error
        assert not (tmp_path / "out").exists()
