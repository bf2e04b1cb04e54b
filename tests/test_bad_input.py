"""The bad-input battery: every mistake a user can make on the command line is refused the same way.

Each case runs the CLI (``hf_peft_suite.cli.main``, or a real process where the process matters) and must give exit
code 2, exactly one line on stderr, ``error: <the problem and the fix>``, no traceback, and leave every file the user
had untouched (a new ``--output_dir`` is not even created). Loading never unpickles and never runs custom code: the
cases that offer a pickle or a custom-code model check that their payload did not run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from hf_peft_suite.cli import main
from hf_peft_suite.experiment import run_experiment
from hf_peft_suite.methods import METHODS
from hf_peft_suite.tiny import build_tiny_model, tiny_t5_config

from .conftest import ADAPTERHUB_PROBLEM, requires_adapterhub, requires_no_gpu, without_adapterhub
from .helpers import assert_refused, snapshot, write_split_files
# (--no_figures: the figures are test_figures.py's; drawing one takes about 0.2 s, a fifth of a run here)
QUICK = ["--preset", "tiny", "--max_steps", "2", "--max_train_samples", "64", "--max_eval_samples", "8", "--no_figures"]


ROWS = [{"text": "great movie", "label": "positive"}, {"text": "awful plot", "label": "negative"}] * 4


# --------------------------------------------------------------------------------------------- arguments
ARGUMENT_CASES = [
    (["--method", "qlora"], r"unknown method 'qlora'; choose one of full, prompt_tuning, adapter, lora"),
    (["--implementation", "both"], r"unknown implementation 'both'; choose one of scratch, library"),
    (["--method", "full", "--implementation", "library"], r"has no library implementation.*--implementation scratch"),
    (["--fp16"], r"--fp16 is refused: T5 overflows in float16.*use --bf16"),
    (["--max_eval_samples", "0"], r"--max_eval_samples must be at least 1"),
    (["--max_train_samples", "-5"], r"--max_train_samples must be at least 1"),
    (["--max_source_length", "0"], r"--max_source_length must be a positive number"),
    (["--method", "lora", "--lora_r", "0"], r"--lora_r must be a positive integer \(got 0\)"),
    (["--method", "lora", "--lora_r", "-8"], r"--lora_r must be a positive integer \(got -8\)"),
    (["--method", "lora", "--lora_alpha", "0"], r"--lora_alpha must be positive"),
    (["--method", "lora", "--lora_dropout", "1.5"], r"--lora_dropout must be in \[0, 1\)"),
    (["--method", "prompt_tuning", "--num_virtual_tokens", "0"], r"--num_virtual_tokens must be a positive integer"),
    (["--method", "prompt_tuning", "--num_virtual_tokens", "-3"], r"--num_virtual_tokens must be a positive integer"),
    (["--method", "prompt_tuning", "--prompt_init", "text"], r"--prompt_init text needs the text.*--prompt_init_text"),
    (["--method", "adapter", "--adapter_reduction_factor", "0"], r"--adapter_reduction_factor must be a positive"),
    (["--method", "adapter", "--adapter_reduction_factor", "-4"], r"--adapter_reduction_factor must be a positive"),
    (["--method", "adapter", "--adapter_reduction_factor", "3"], r"does not divide the base model's d_model 64"),
    (["--method", "lora", "--lora_target_modules", "query", "value"],
     r"--lora_target_modules query value matches no module.*named k, lm_head, o, q, v, wi, wo"),
    (["--method", "lora", "--lora_target_modules", "(q|v"], r"--lora_target_modules '\(q\|v' is not a valid regular"),
    (["--method", "lora", "--lora_target_modules", ".*q", "v"], r"a regular expression \('\.\*q'\) must stand alone"),
    (["--method", "lora", "--lora_use_dora", "perhaps"], r"argument --lora_use_dora.*Truthy value expected: got perhaps"),
    (["--method", "ia3", "--ia3_target_modules", "query"], r"--ia3_target_modules query matches no module"),
    (["--method", "ia3", "--ia3_target_modules", "k", "v", "--ia3_feedforward_modules", "wo"],
     r"--ia3_feedforward_modules wo names wo, which --ia3_target_modules k v does not list"),
    (["--method", "ia3", "--ia3_feedforward_modules", "all-linear"], r"--ia3_feedforward_modules takes layer names"),
    (["--method", "prefix_tuning", "--prefix_num_virtual_tokens", "0"],
     r"--prefix_num_virtual_tokens must be a positive integer, got 0"),
    (["--method", "prefix_tuning", "--prefix_projection_hidden_size", "8"],
     r"--prefix_projection_hidden_size sizes the MLP of --prefix_projection true"),
    (["--method", "prefix_tuning", "--gradient_checkpointing"],
     r"--method prefix_tuning does not work with --gradient_checkpointing"),
    (["--per_device_train_batch_size", "0"], r"--per_device_train_batch_size must be at least 1"),
    (["--learning_rate", "-0.1"], r"--learning_rate must be positive"),
    (["--num_train_epochs", "0", "--max_steps", "-1"], r"--num_train_epochs 0 trains nothing"),
    (["--eval_strategy", "sometimes"], r"invalid training arguments: sometimes is not a valid IntervalStrategy"),
    (["--lerning_rate", "0.1"], r"unrecognized arguments: --lerning_rate 0.1; did you mean --learning_rate\?"),
    (["--preset", "huge"], r"unknown preset 'huge'; choose one of"),
]


@pytest.mark.parametrize(("argv", "message"), ARGUMENT_CASES, ids=[" ".join(a) for a, _ in ARGUMENT_CASES])
def test_bad_arguments(argv, message, capsys, tmp_path):
    out = tmp_path / "out"
    assert_refused([*QUICK, "--output_dir", out, *argv], message, capsys, absent=out)


def test_json_config_with_an_unknown_key_or_no_json(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"preset": "tiny", "lerning_rate": 0.1}))
    assert_refused([config], r"unknown key 'lerning_rate'; did you mean 'learning_rate'\?", capsys, tmp_path)
    config.write_text("{'preset': 'tiny'}")
    assert_refused([config], r"is not valid JSON", capsys, tmp_path)
    config.write_text("[1, 2]")
    assert_refused([config], r"must hold one JSON object", capsys, tmp_path)
    assert_refused([tmp_path / "missing.json"], r"config file .*missing.json does not exist", capsys, tmp_path)


def test_library_implementation_that_cannot_be_imported_is_one_error_line(monkeypatch, tmp_path, capsys):
    """``adapters`` made unimportable (``sys.modules["adapters"] = None``), as where it is installed but broken."""
    monkeypatch.setitem(sys.modules, "adapters", None)
    assert_refused([*QUICK, "--method", "adapter", "--implementation", "library", "--output_dir", tmp_path / "out"],
                   r"--method adapter --implementation library: 'adapters' .*pip install 'hf-peft-suite\[adapters\]'",
                   capsys, absent=tmp_path / "out")


@without_adapterhub
def test_library_implementation_not_installed(capsys, tmp_path):
    assert_refused([*QUICK, "--method", "adapter", "--implementation", "library", "--output_dir", tmp_path / "out"],
                   r"needs the 'adapters' package, which is not installed; install it with: pip install", capsys,
                   absent=tmp_path / "out")


@pytest.mark.slow
def test_bad_input_in_a_real_process_prints_one_line_and_no_traceback(unknown_method_process):
    """``run_experiment.py --preset tiny --method qlora`` as a real process (the session's ``unknown_method_process``):
    exit status 2, one line, nothing written."""
    result, output_dir = unknown_method_process
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown method 'qlora'; choose one of " + ", ".join(METHODS) + " (--method NAME)"
    ]
    assert not output_dir.exists()


@requires_no_gpu
def test_fsdp_on_a_machine_without_gpus_is_refused_rather_than_silently_run_as_data_parallel(tmp_path, capsys,
                                                                                            monkeypatch):
    # Tried with two gloo processes: accelerate builds a MULTI_CPU state and drops the FSDP plugin (or, syncing module
    # states, raises "no available devices"), so the run would not be sharded at all (docs/distributed.md).
    for key in [key for key in os.environ if key.startswith(("ACCELERATE_", "FSDP_"))]:
        monkeypatch.delenv(key)  # what earlier runs in this process wrote there: a new process starts without them
    environment = dict(os.environ)
    assert_refused([*QUICK, "--method", "lora", "--fsdp", "full_shard auto_wrap", "--output_dir", tmp_path / "out"],
                   r"--fsdp needs GPUs: on CPUs accelerate drops it", capsys, absent=tmp_path / "out")
    assert dict(os.environ) == environment  # refused before transformers sets ACCELERATE_USE_FSDP for this process


def test_traceback_variable_shows_where_a_refusal_came_from_for_bug_reports(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_PEFT_SUITE_TRACEBACK", "1")
    assert main(["--preset", "tiny", "--method", "qlora", "--output_dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "Traceback (most recent call last)" in error and "hf_peft_suite.errors.UsageError" in error
    assert error.strip().splitlines()[-1].startswith("error: unknown method 'qlora'")
    assert not (tmp_path / "out").exists()


def test_a_bug_is_not_dressed_as_a_usage_error(monkeypatch, tmp_path):
    """Only expected exceptions become one-line refusals: an error of ours keeps its type and traceback."""
    from hf_peft_suite import experiment

    def broken(*args, **kwargs):
        raise TypeError("a bug in hf_peft_suite")

    monkeypatch.setattr(experiment, "load_data", broken)
    with pytest.raises(TypeError, match="a bug in hf_peft_suite"):
        main([*QUICK, "--output_dir", str(tmp_path / "out")])


# ------------------------------------------------------------------------------------------------- models
def test_a_model_that_is_not_an_encoder_decoder(tmp_path, capsys):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_head=2, n_embd=8).save_pretrained(tmp_path / "gpt2")
    assert_refused([*QUICK, "--model_name_or_path", tmp_path / "gpt2", "--tokenizer_name_or_path", "builtin:tiny-t5",
                    "--output_dir", tmp_path / "out"], r"is a gpt2 model, not an encoder-decoder.*t5-small",
                   capsys, tmp_path / "gpt2", absent=tmp_path / "out")


def test_a_model_path_that_does_not_exist(tmp_path, capsys):
    assert_refused([*QUICK, "--model_name_or_path", "./no/such/model", "--output_dir", tmp_path / "out"],
                   r"the model path ./no/such/model does not exist", capsys, absent=tmp_path / "out")


def test_pickled_weights_are_refused_without_being_unpickled(tmp_path, capsys):
    folder = tmp_path / "pickled"
    build_tiny_model().config.save_pretrained(folder)
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling this object creates the marker file
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"payload": Payload()}, folder / "pytorch_model.bin")
    assert_refused([*QUICK, "--model_name_or_path", folder, "--tokenizer_name_or_path", "builtin:tiny-t5",
                    "--output_dir", tmp_path / "out"], r"holds only pickled weights.*never loaded", capsys, folder,
                   absent=tmp_path / "out")
    assert not marker.exists()


def test_a_model_that_needs_custom_code_is_refused_without_running_it(tmp_path, capsys):
    folder, marker = tmp_path / "custom", tmp_path / "custom_code_ran"
    config = tiny_t5_config().to_dict()
    config.update(model_type="custom_t5", auto_map={"AutoConfig": "custom.CustomConfig",
                                                   "AutoModelForSeq2SeqLM": "custom.CustomModel"})
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import T5Config as CustomConfig, T5ForConditionalGeneration as CustomModel\n"
    )
    assert_refused([*QUICK, "--model_name_or_path", folder, "--tokenizer_name_or_path", "builtin:tiny-t5",
                    "--output_dir", tmp_path / "out"], r"needs its own Python code.*never runs remote or custom code",
                   capsys, folder, absent=tmp_path / "out")
    assert not marker.exists()


def test_a_truncated_model_file_is_refused(tmp_path, capsys):
    folder = tmp_path / "truncated"
    build_tiny_model().save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert_refused([*QUICK, "--model_name_or_path", folder, "--tokenizer_name_or_path", "builtin:tiny-t5",
                    "--output_dir", tmp_path / "out"], r"SafetensorError.*a damaged or truncated file", capsys,
                   folder, absent=tmp_path / "out")


# --------------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize(
    ("rows", "argv", "message"),
    [
        (None, ["--dataset_name", "./missing/imdb"], r"dataset path ./missing/imdb does not exist"),
        (None, ["--text_column", "review"], r"no column 'review'.*--text_column"),
        (None, ["--label_column", "stars"], r"no column 'stars'.*--label_column"),
        (None, ["--eval_split", "validation"], r"no split 'validation'.*--eval_split"),
        (None, ["--label_words", "negative", "zzzunknownzzz"], r"does not survive this tokenizer"),
        ((ROWS + [{"text": "dull plot", "label": "mixed"}], ROWS), ["--label_words", "negative", "positive"],
         r"labels \['mixed'\] in column 'label' have no label word.*add them to --label_words, map each label value "
         r"to its word \(--label_words mixed=WORD negative=negative positive=positive\), or fix the data"),
        ((ROWS, []), [], r"(the test split is empty|cannot read)"),
        ((ROWS + [{"text": " ", "label": "positive"}], ROWS), [], r"1 rows of the train split have an empty 'text'"),
    ],
    ids=["missing-path", "text-column", "label-column", "split", "label-word", "outside-labels", "empty-split",
         "empty-text"],
)
def test_bad_data(rows, argv, message, tmp_path, capsys):
    data = []
    if rows is not None:
        data = ["--dataset_name", write_split_files(tmp_path / "data", *rows)]
    assert_refused([*QUICK, *data, *argv, "--output_dir", tmp_path / "out"], message, capsys, tmp_path / "data",
                   absent=tmp_path / "out")


# ----------------------------------------------------------------------------------- output_dir and resume
def test_an_output_dir_that_holds_a_previous_run(tmp_path, capsys):
    previous = tmp_path / "run"
    previous.mkdir()
    (previous / "results.json").write_text('{"best_accuracy": 0.9}\n')
    assert_refused([*QUICK, "--output_dir", previous], r"--output_dir .*run already holds a previous run; choose a new "
                   r"--output_dir, resume it with --resume_from_checkpoint, or pass --overwrite_output_dir", capsys,
                   previous)
    file = tmp_path / "a_file"
    file.write_text("mine")
    assert_refused([*QUICK, "--output_dir", file], r"is a file; give a folder", capsys, tmp_path)


RESUMABLE = {  # cell -> (its arguments, the file holding its trainable weights)
    "lora-scratch": (["--method", "lora"], "model.safetensors"),
    "lora-peft": (["--method", "lora", "--implementation", "library"], "adapter_model.safetensors"),
    "prompt-scratch": (["--method", "prompt_tuning"], "model.safetensors"),
    "adapter-adapterhub": (["--method", "adapter", "--implementation", "library"], "adapter.safetensors"),
}


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory):
    """Runs with a checkpoint after 2 steps, as a stopped run leaves them (read-only: tests copy them)."""
    root, runs = tmp_path_factory.mktemp("stopped"), {}
    for name, (argv, _) in RESUMABLE.items():
        if name == "adapter-adapterhub" and ADAPTERHUB_PROBLEM:
            continue
        runs[name] = root / name
        assert main([*QUICK, *argv, "--save_strategy", "steps", "--save_steps", "2", "--output_dir", str(runs[name])]) == 0
        shutil.rmtree(runs[name] / "model")
        (runs[name] / "results.json").unlink()
    return runs


def copy_run(stopped_runs, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(stopped_runs[name], tmp_path / name))


def resumable(*names: str) -> list:
    """``names`` as parameters, the AdapterHub cell with its mark."""
    return [pytest.param(name, marks=[requires_adapterhub] if name == "adapter-adapterhub" else []) for name in names]


@pytest.mark.slow  # (trains runs of its own)
def test_resume_from_a_checkpoint_that_does_not_exist_or_is_not_one(stopped_runs, tmp_path, capsys):
    run = copy_run(stopped_runs, "lora-scratch", tmp_path)
    assert_refused([*QUICK, "--method", "lora", "--output_dir", run, "--resume_from_checkpoint", run / "checkpoint-9"],
                   r"checkpoint-9 does not exist.*checkpoints in .*: .*checkpoint-2\), or 'last'", capsys, run)
    assert_refused([*QUICK, "--method", "lora", "--output_dir", run, "--resume_from_checkpoint", run / "base_model"],
                   r"base_model is not a Trainer checkpoint \(it has no trainer_state.json\)", capsys, run)
    empty = tmp_path / "empty"
    assert_refused([*QUICK, "--method", "lora", "--output_dir", empty, "--resume_from_checkpoint", "last"],
                   r"holds no checkpoint-\* folder to resume from", capsys, absent=empty)


def test_resume_from_a_checkpoint_whose_trainer_state_is_damaged(stopped_runs, tmp_path, capsys):
    run = copy_run(stopped_runs, "lora-scratch", tmp_path)
    state = run / "checkpoint-2" / "trainer_state.json"
    state.write_text(state.read_text()[:40])  # cut short, as a crash while it was being written leaves it
    assert_refused([*QUICK, "--method", "lora", "--output_dir", run, "--resume_from_checkpoint", "last"],
                   r"checkpoint-2: its trainer_state.json is damaged \(.*\); resume from ", capsys, run)


@pytest.mark.parametrize("name", resumable(*RESUMABLE))
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_resume_from_a_corrupted_or_truncated_adapter_file(name, damage, stopped_runs, tmp_path, capsys):
    run = copy_run(stopped_runs, name, tmp_path)
    argv, weights_name = RESUMABLE[name]
    weights = run / "checkpoint-2" / weights_name
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2] if damage == "truncated" else b"\0" * 64)
    assert_refused([*QUICK, *argv, "--output_dir", run, "--resume_from_checkpoint", "last"],
                   r"cannot resume from .*checkpoint-2: .*(corrupted or truncated|cannot be loaded)", capsys, run)


def test_resume_onto_another_base_model(stopped_runs, tmp_path, capsys):
    """A delta trained on the tiny T5 (d_model 64), resumed onto a T5 of another width."""
    other = tmp_path / "other_base"
    config = tiny_t5_config()
    config.d_model, config.d_ff = 32, 64
    from transformers import T5ForConditionalGeneration

    T5ForConditionalGeneration(config).save_pretrained(other)
    for name, message in [("lora-scratch", r"base_model_config.d_model 64 \(saved\) vs 32 \(this run\)"),
                          ("lora-peft", r"other shapes 12, e.g. .*lora_A.weight \(8, 64\) vs \(8, 32\)")]:
        run = copy_run(stopped_runs, name, tmp_path)
        argv, _ = RESUMABLE[name]
        assert_refused([*QUICK, *argv, "--model_name_or_path", other, "--tokenizer_name_or_path", "builtin:tiny-t5",
                        "--output_dir", run, "--resume_from_checkpoint", "last"],
                       rf"cannot resume from .*checkpoint-2: .*({message})", capsys, run, other)


@pytest.mark.parametrize(
    ("name", "argv", "message"),
    [
        ("lora-scratch", ["--method", "lora", "--lora_r", "4"], r"lora_r 8 \(saved\) vs 4 \(this run\)"),
        ("lora-peft", ["--method", "lora", "--implementation", "library", "--lora_alpha", "32"],
         r"lora_alpha 16 \(saved\) vs 32 \(this run\)"),
        ("lora-scratch", ["--method", "prompt_tuning"], r"model_type 'hf_peft_suite_lora' \(saved\)"),
        ("lora-peft", ["--method", "adapter"], r"holds no config.json|model_type"),
        ("prompt-scratch", ["--method", "full"], r"do not match this model's trainable parameters"),
        pytest.param("adapter-adapterhub", ["--method", "adapter", "--implementation", "library", "--adapter_config",
                                            "double_seq_bn"], r"saved with other options \(mh_adapter",
                     marks=requires_adapterhub),
    ],
    ids=["lora-other-rank", "peft-other-alpha", "lora-into-prompt", "peft-into-adapter", "prompt-into-full",
         "adapterhub-other-config"],
)
def test_resume_with_another_method_or_other_options(name, argv, message, stopped_runs, tmp_path, capsys):
    run = copy_run(stopped_runs, name, tmp_path)
    assert_refused([*QUICK, *argv, "--output_dir", run, "--resume_from_checkpoint", "last"],
                   rf"cannot resume from .*checkpoint-2: .*{message}", capsys, run)


def test_a_resumed_run_that_fails_leaves_the_previous_run_as_it_was(stopped_runs, tmp_path):
    """The API raises the same UsageError (no process exit) and still writes nothing."""
    from hf_peft_suite.errors import UsageError

    run = copy_run(stopped_runs, "lora-scratch", tmp_path)
    before = snapshot(run)
    with pytest.raises(UsageError, match="lora_r"):
        run_experiment(preset="tiny", method="lora", lora_r=2, max_steps=2, output_dir=str(run),
                       resume_from_checkpoint="last")
    assert snapshot(run) == before
    assert os.listdir(run) == os.listdir(stopped_runs["lora-scratch"])


@pytest.mark.parametrize("state_file", ["optimizer.pt", "rng_state.pth", "scheduler.pt"])
def test_resume_never_runs_a_pickle_payload_in_a_checkpoint(state_file, stopped_runs, tmp_path, capsys):
    """Trainer's state files are pickles; resume loads them with weights_only=True, so a payload is refused, unrun."""
    run = copy_run(stopped_runs, "lora-scratch", tmp_path)
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state": Payload()}, run / "checkpoint-2" / state_file)
    # Two more steps to train, so the RNG state is read too (at the start of the next epoch).
    assert_refused([*QUICK, "--max_steps", "4", "--method", "lora", "--output_dir", run, "--resume_from_checkpoint",
                    "last"],
                   r"cannot resume from .*checkpoint-2: its .*state cannot be loaded \(UnpicklingError", capsys, run)
    assert not marker.exists()
