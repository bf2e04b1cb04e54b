"""Hardening: refusals before anything is written, no tracebacks, crash-safe and race-safe output folders.

Each case runs the CLI as a user does (``main``, or a real process where the process matters) and compares the files
before and after. The items follow docs/errors.md and docs/checkpoints.md, which state what is guaranteed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_peft_suite.cli import main
from hf_peft_suite.tiny import build_tiny_model, tiny_t5_config

from .conftest import REPO_ROOT
from .helpers import assert_refused, cli_environment, read_results, write_split_files

# (--no_figures: the figures are test_figures.py's; drawing one takes about 0.2 s, a fifth of a run here)
QUICK = ["--preset", "tiny", "--max_steps", "2", "--max_train_samples", "64", "--max_eval_samples", "8", "--no_figures"]
ROWS = [{"text": "great movie", "label": "positive"}, {"text": "awful plot", "label": "negative"}] * 4


def finished_run(folder: Path, *argv) -> Path:
    assert main([*QUICK, *argv, "--output_dir", str(folder)]) == 0
    return folder


# ----------------------------------------------------------------------------------- 1. resume at the final step
@pytest.mark.slow
def test_a_run_resumed_from_its_last_checkpoint_ends_exactly_where_the_uninterrupted_run_ends(tmp_path, capsys):
    """Stopped while its final model/ was being written: the last checkpoint is at --max_steps. Resuming must not
    train past it (Trainer trained step 6 of 5 and wrote checkpoint-6)."""
    argv = ["--preset", "tiny", "--method", "lora", "--max_steps", "5", "--max_train_samples", "64",  # 2 steps an epoch
            "--max_eval_samples", "16", "--save_strategy", "steps", "--save_steps", "1",
            "--lr_scheduler_type", "constant"]
    whole = tmp_path / "whole"
    assert main([*argv, "--output_dir", str(whole)]) == 0
    stopped = Path(shutil.copytree(whole, tmp_path / "stopped"))
    shutil.rmtree(stopped / "model")  # the crash: model/, eval_predictions.json and results.json never written
    for name in ("results.json", "eval_predictions.json"):
        (stopped / name).unlink()

    assert main([*argv, "--output_dir", str(stopped), "--resume_from_checkpoint", "last"]) == 0
    assert sorted(path.name for path in stopped.glob("checkpoint-*")) == [f"checkpoint-{step}" for step in range(1, 6)]
    expected, resumed = (load_file(folder / "model" / "model.safetensors") for folder in (whole, stopped))
    assert all(torch.equal(expected[name], resumed[name]) for name in expected) and expected.keys() == resumed.keys()
    final = {folder: read_results(folder)["final_metrics"] for folder in (whole, stopped)}
    assert final[stopped]["eval_loss"] == final[whole]["eval_loss"]
    assert final[stopped]["eval_accuracy"] == final[whole]["eval_accuracy"]
    assert read_results(stopped)["history"][-1]["step"] == 5


# -------------------------------------------------------------------------------- 2. one folder, one run at a time
@pytest.mark.slow
def test_two_runs_started_into_one_folder_at_once_one_is_refused_and_the_folder_stays_whole(tmp_path):
    folder = tmp_path / "shared"
    commands = [[sys.executable, "run_experiment.py", *QUICK, "--method", method, "--implementation", implementation,
                 "--output_dir", str(folder)] for method, implementation in (("lora", "scratch"),
                                                                               ("prompt_tuning", "library"))]
    processes = [subprocess.Popen(command, cwd=REPO_ROOT, env=cli_environment(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for command in commands]
    outcomes = [(process.wait(timeout=300), process.stderr.read()) for process in processes]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2], outcomes
    refused = next(stderr for code, stderr in outcomes if code == 2)
    assert re.search(r"error: --output_dir .* (is in use by another run|already holds a previous run)", refused)
    results = read_results(folder)
    model_files = {path.name for path in (folder / "model").iterdir()}
    if results["method"] == "lora":  # model/ holds the delta of the run results.json names, and nothing else
        assert "model.safetensors" in model_files and "adapter_config.json" not in model_files
    else:
        assert "adapter_model.safetensors" in model_files and "model.safetensors" not in model_files
    assert not (folder / ".hf_peft_suite.lock").exists()


def test_a_folder_locked_by_a_live_run_is_refused_and_a_crashed_runs_lock_is_taken_over(tmp_path, capsys):
    import socket

    folder = tmp_path / "run"
    folder.mkdir()
    lock = folder / ".hf_peft_suite.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))  # this test's process is alive
    assert_refused([*QUICK, "--output_dir", folder], r"is in use by another run \(process \d+ on ", capsys, folder)

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(gone.stdout)}))  # a crashed run's lock
    assert main([*QUICK, "--output_dir", str(folder)]) == 0
    assert (folder / "results.json").is_file() and not lock.exists()


# ---------------------------------------------------------------------------- 3. one error line, not a traceback
def test_a_text_column_of_numbers(tmp_path, capsys):
    numbers = [{"text": 3, "label": "positive"}, {"text": 4, "label": "negative"}]
    data = write_split_files(tmp_path / "data", numbers, numbers)
    assert_refused([*QUICK, "--dataset_name", data, "--output_dir", tmp_path / "out"],
                   r"the train split's column 'text' holds int values, not text \(row 0: 3\); name the column of texts "
                   r"with --text_column", capsys, data, absent=tmp_path / "out")


def test_an_output_dir_under_a_file(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert_refused([*QUICK, "--output_dir", tmp_path / "notes.txt" / "run"],
                   r"--output_dir .*notes.txt/run cannot be made: .*notes.txt is a file, not a folder", capsys, tmp_path)


def test_an_output_dir_in_a_place_the_user_cannot_write_is_refused_before_loading(capsys):
    """A folder the user may not write into. Root may write anywhere, so as root the call runs as the unprivileged
    user nobody (the real user id stays root, so it can come back)."""
    import tempfile

    place = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's own folders are private to root: nobody cannot reach them
    place.chmod(0o755)
    locked = place / "locked"
    locked.mkdir(mode=0o555)
    (place / "file").write_text("")  # warm-up: the same path through the CLI loads every module it needs
    assert main([*QUICK, "--output_dir", str(place / "file" / "run")]) == 2 and capsys.readouterr()
    as_root = os.geteuid() == 0
    if as_root:
        os.seteuid(65534)
    try:
        code = main([*QUICK, "--output_dir", str(locked / "run")])
    finally:
        if as_root:
            os.seteuid(0)
        shutil.rmtree(place, ignore_errors=True)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --output_dir {locked / 'run'} cannot be written: {locked} is not writable by you; give another path"]


def test_a_tokenizer_larger_than_the_models_embedding_is_refused_before_training(tmp_path, capsys):
    from transformers import T5ForConditionalGeneration

    folder = tmp_path / "small-vocab"
    T5ForConditionalGeneration(tiny_t5_config(vocab_size=50)).save_pretrained(folder)
    assert_refused([*QUICK, "--model_name_or_path", folder, "--tokenizer_name_or_path", "builtin:tiny-t5",
                    "--output_dir", tmp_path / "out"],
                   r"the tokenizer has 71 tokens but the model's embedding has 50 rows", capsys, folder,
                   absent=tmp_path / "out")


def test_predict_with_generate_false(tmp_path, capsys):
    assert_refused([*QUICK, "--predict_with_generate", "false", "--output_dir", tmp_path / "out"],
                   r"--predict_with_generate false would score no generated label words", capsys,
                   absent=tmp_path / "out")


def test_configs_that_are_not_utf8_or_whose_per_method_is_not_an_object(tmp_path, capsys):
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"_note": "caf\xe9", "seed": 1}'.encode("latin-1"))
    assert_refused([str(latin), *QUICK], r"config file .*latin.json is not UTF-8 text; save it as UTF-8 JSON", capsys)
    for value in ([1, 2], {"lora": 5}):
        config = tmp_path / "per_method.json"
        config.write_text(json.dumps({"per_method": value}))
        assert_refused([str(config), *QUICK], r"per_method must map method names to objects of settings", capsys)


# ---------------------------------------------------------------------- 4. refusals that used to write files
@pytest.fixture(scope="module")
def full_run_with_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full") / "full"
    assert main([*QUICK, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--output_dir",
                 str(folder)]) == 0
    (folder / "results.json").unlink()  # as a stopped run leaves it
    shutil.rmtree(folder / "model")
    return folder


def test_resuming_another_methods_checkpoint_writes_nothing_into_either_folder(full_run_with_checkpoints, tmp_path,
                                                                                capsys):
    run = Path(shutil.copytree(full_run_with_checkpoints, tmp_path / "run"))
    assert_refused([*QUICK, "--max_steps", "4", "--method", "lora", "--output_dir", run, "--resume_from_checkpoint",
                    run / "checkpoint-2"], r"cannot resume from .*checkpoint-2: it was saved with other options", capsys,
                   run)
    assert not (run / "base_model").exists()  # it used to be written before the checkpoint was checked
    new = tmp_path / "new"
    assert_refused([*QUICK, "--max_steps", "4", "--method", "lora", "--output_dir", new, "--resume_from_checkpoint",
                    run / "checkpoint-2"], r"cannot resume from", capsys, run, absent=new)


# ----------------------------------------------------------------------------------- 5. silently wrong results
@pytest.mark.slow
def test_resuming_a_random_base_run_with_another_seed_is_refused(tmp_path, capsys):
    run = tmp_path / "lora"
    assert main([*QUICK, "--method", "lora", "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
                 "--output_dir", str(run)]) == 0
    (run / "results.json").unlink()
    shutil.rmtree(run / "model")
    assert_refused([*QUICK, "--method", "lora", "--max_steps", "4", "--seed", "1", "--output_dir", run,
                    "--resume_from_checkpoint", "last"],
                   r"base_model holds the random base the resumed run was built with, and this run builds another",
                   capsys, run)


def test_resuming_into_a_finished_run_from_another_folders_checkpoint_is_refused(full_run_with_checkpoints, tmp_path,
                                                                                 capsys):
    finished = finished_run(tmp_path / "finished")
    assert_refused([*QUICK, "--max_steps", "4", "--output_dir", finished, "--resume_from_checkpoint",
                    full_run_with_checkpoints / "checkpoint-2"],
                   r"holds a finished run \(results.json\): resuming into it would replace it", capsys, finished,
                   full_run_with_checkpoints)


@pytest.mark.slow  # (trains runs of its own)
def test_overwrite_output_dir_replaces_the_previous_runs_checkpoints_too(tmp_path):
    run = tmp_path / "run"
    assert main([*QUICK, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--output_dir",
                 str(run)]) == 0
    (run / "my_notes.txt").write_text("mine")
    assert main([*QUICK, "--overwrite_output_dir", "true", "--output_dir", str(run)]) == 0
    assert not list(run.glob("checkpoint-*"))  # `last` would have resumed the old run's checkpoint
    assert (run / "my_notes.txt").read_text() == "mine"  # only what a run writes is removed
    assert read_results(run)["history"][-1]["step"] == 2


def test_a_generation_length_shorter_than_the_label_words_is_refused(tmp_path, capsys):
    assert_refused([*QUICK, "--generation_max_length", "2", "--output_dir", tmp_path / "out"],
                   r"--generation_max_length 2 is too short for the label words \(the longest needs 2 tokens after the "
                   r"start token, so at least 3\)", capsys, absent=tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize("cell", [("lora", "scratch"), ("lora", "library"), ("full", "scratch")],
                         ids=["lora-scratch", "lora-peft", "full"])
def test_the_model_cards_loading_code_of_a_local_run_runs_elsewhere(cell, finished_runs, tmp_path, monkeypatch):
    run = finished_runs[cell]  # read only: the card loads from the run's own folder
    card = (run / "model" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, flags=re.S).group(1)
    assert str((run / "model").absolute()) in code
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["output"].shape[0] == 1


# ----------------------------------------------------------------------------------- 6. messages that say what
def test_a_csv_that_is_not_utf8_is_one_line_naming_the_encoding(tmp_path, capsys):
    data = tmp_path / "data"
    write_split_files(data, ROWS, ROWS)
    (data / "train.csv").write_bytes("text,label\nun film tr\xe8s ennuyeux,negative\ngreat,positive\n".encode("latin-1"))
    assert_refused([*QUICK, "--dataset_name", data, "--output_dir", tmp_path / "out"],
                   r"cannot read .* is not UTF-8 text \(.*\); save it as UTF-8", capsys, data, absent=tmp_path / "out")


def test_a_model_folder_without_a_tokenizer(tmp_path, capsys):
    folder = tmp_path / "no-tokenizer"
    build_tiny_model().save_pretrained(folder)
    assert_refused([*QUICK, "--model_name_or_path", folder, "--output_dir", tmp_path / "out"],
                   r"the folder .*no-tokenizer holds no tokenizer \(none of tokenizer.json", capsys, folder,
                   absent=tmp_path / "out")


def test_an_empty_text_is_reported_by_its_row_in_the_users_file(tmp_path, capsys):
    rows = [{"text": f"good film number {index}", "label": "positive"} for index in range(9)]
    rows[6]["text"] = " "
    data = write_split_files(tmp_path / "data", rows + ROWS, ROWS)
    assert_refused([*QUICK, "--max_train_samples", "3", "--dataset_name", data, "--output_dir", tmp_path / "out"],
                   r"1 rows of the train split have an empty 'text' \(the first is row 6, counting from 0", capsys)


# ------------------------------------------------------------------------------------------ 7. warnings, not errors
@pytest.mark.parametrize(
    ("rows", "argv", "warning"),
    [
        ([r for r in ROWS if r["label"] == "positive"], [], r"the training data holds only the class 'positive'"),
        (None, ["--max_source_length", "4"], r"--max_source_length 4 keeps fewer than 8 tokens"),
    ],
    ids=["one-class", "short-inputs"],
)
def test_legal_but_likely_mistakes_warn_once_and_the_run_goes_on(rows, argv, warning, tmp_path, capsys):
    data = []
    if rows is not None:
        data = ["--dataset_name", str(write_split_files(tmp_path / "data", rows, rows))]
    assert main([*QUICK, *data, *argv, "--output_dir", str(tmp_path / "out")]) == 0
    stderr = capsys.readouterr().err
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and re.search(warning, warnings[0]), stderr
    assert (tmp_path / "out" / "results.json").is_file()


def test_evaluation_classes_never_seen_in_training_warn(tmp_path, capsys):
    train = [r for r in ROWS if r["label"] == "positive"] + [{"text": "fine film", "label": "positive"}]
    data = write_split_files(tmp_path / "data", train, ROWS)
    assert main([*QUICK, "--dataset_name", str(data), "--label_words", "negative", "positive",
                 "--output_dir", str(tmp_path / "out")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert any("the evaluation data holds classes never seen in training: ['negative']" in line for line in warnings)


# ------------------------------------------------------------------------------------------ 8. a busy machine
@pytest.mark.slow  # (trains runs of its own)
def test_the_tiny_preset_trains_on_one_thread_and_the_flag_sets_any_count(tmp_path):
    """Whatever count torch had before the run (another count than expected, as a machine's default would be), the
    tiny preset trains on 1 thread and --num_threads N on N."""
    from transformers import TrainerCallback

    from hf_peft_suite import run_experiment

    class Threads(TrainerCallback):
        seen: list[int] = []

        def on_train_begin(self, *args, **kwargs):
            self.seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    try:
        for argv, threads in (([], 1), (["--num_threads", "2"], 2)):
            torch.set_num_threads(3 - threads)
            run_experiment([*QUICK, "--max_steps", "1", "--max_train_samples", "32", "--max_eval_samples", "4", *argv,
                            "--output_dir", str(tmp_path / f"run{threads}")], callbacks=[Threads()])
            assert Threads.seen[-1] == threads
    finally:
        torch.set_num_threads(before)
