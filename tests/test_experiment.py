"""End to end: the tiny preset learns, JSON configs run, results.json holds what it promises, bad input exits 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hf_peft_suite.arguments import load_json_config, load_preset, parse_arguments
from hf_peft_suite.cli import main
from hf_peft_suite.experiment import run_experiment

from .conftest import REPO_ROOT

QUICK = {"preset": "tiny", "max_steps": 6, "max_eval_samples": 64}


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    """The tiny preset as a user runs it, through the Python API."""
    output_dir = tmp_path_factory.mktemp("tiny") / "run"
    return run_experiment(preset="tiny", output_dir=str(output_dir)), output_dir


def test_tiny_preset_learns_well_above_chance(tiny_results):
    results, _ = tiny_results
    assert results["best_accuracy"] > 0.9
    assert results["history"][0]["train_loss"] > results["history"][-1]["train_loss"]


def test_results_json_holds_config_history_parameters_runtimes_and_versions(tiny_results):
    results, output_dir = tiny_results
    saved = json.loads((output_dir / "results.json").read_text())
    assert saved["best_accuracy"] == results["best_accuracy"]
    assert [row["epoch"] for row in saved["history"]] == [1, 2, 3, 4]
    for row in saved["history"]:
        assert {"train_loss", "eval_accuracy", "eval_macro_f1", "eval_invalid_rate"} <= set(row)
        assert row["eval_num_scored"] == saved["num_eval_examples"] == 400
    assert saved["best_epoch"] in (1, 2, 3, 4)
    assert saved["parameters"]["total"] == saved["parameters"]["trainable"] == 169_216
    assert saved["train_runtime_s"] > 0 and saved["train_samples_per_second"] > 0
    assert saved["eval_runtime_s"] > 0 and saved["peak_memory_mb"] > 0
    assert saved["artifact_size_bytes"] > 4 * 169_216  # fp32 weights of every parameter
    assert saved["versions"]["transformers"] and saved["versions"]["torch"]
    assert saved["config"]["experiment"]["method"] == "full"
    assert saved["config"]["training"]["learning_rate"] == 0.003
    assert saved["label_words"] == ["negative", "positive"] and saved["max_new_tokens"] == 2


def test_saved_full_model_reloads_with_identical_generations(tiny_results):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    _, output_dir = tiny_results
    model = AutoModelForSeq2SeqLM.from_pretrained(output_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(output_dir / "model")
    inputs = tokenizer(["a wonderful and moving film", "a dull and tedious film"], return_tensors="pt", padding=True)
    generated = model.generate(**inputs, max_new_tokens=2)
    assert tokenizer.batch_decode(generated, skip_special_tokens=True) == ["positive", "negative"]


def test_configs_match_the_presets_they_reproduce():
    for name in ("tiny", "seed"):
        assert load_json_config(REPO_ROOT / "configs" / f"{name}.json") == load_preset(name)


def test_running_alone_means_the_reference_recipe():
    from hf_peft_suite.methods import METHODS

    defaults, seed = parse_arguments([]).to_dict(), parse_arguments(["--preset", "seed"]).to_dict()
    assert defaults["training"].pop("learning_rate") is None  # resolved to the method default at run time ...
    assert seed["training"].pop("learning_rate") == METHODS["full"].default_learning_rate == 1e-5  # ... which is this
    assert seed["experiment"].pop("preset") == "seed" and defaults["experiment"].pop("preset") is None
    assert defaults == seed
    defaults = parse_arguments([])
    assert defaults.model.model_name_or_path == "t5-small" and defaults.data.dataset_name == "imdb"
    assert defaults.training.per_device_train_batch_size == 32 and defaults.training.num_train_epochs == 10
    assert defaults.experiment.method == "full" and defaults.data.max_source_length == 256


def test_flags_override_json_config_which_overrides_preset(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"preset": "tiny", "num_train_epochs": 2, "seed": 5}))
    parsed = parse_arguments([str(config), "--seed", "7"])
    assert parsed.training.num_train_epochs == 2  # JSON over preset (4)
    assert parsed.training.seed == 7  # flag over JSON
    assert parsed.model.model_name_or_path == "builtin:tiny-t5"  # from the preset


def run_cli(*argv, cwd=REPO_ROOT):
    """The CLI as a user runs it: a separate process."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "run_experiment.py", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_json_config_runs_and_a_second_run_never_overwrites_the_first(tmp_path):
    output_dir = tmp_path / "run"
    first = run_cli("configs/tiny.json", "--output_dir", str(output_dir), "--max_steps", "4")
    assert first.returncode == 0, first.stderr
    assert "best valid_acc" in first.stdout
    saved = (output_dir / "results.json").read_bytes()

    second = run_cli("configs/tiny.json", "--output_dir", str(output_dir), "--max_steps", "4")
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"error: --output_dir {output_dir} already holds a previous run; choose a new --output_dir, resume it with "
        f"--resume_from_checkpoint, or pass --overwrite_output_dir to replace it"
    ]
    assert "Traceback" not in second.stderr
    assert (output_dir / "results.json").read_bytes() == saved


@pytest.fixture(scope="module")
def decoder_only_model(tmp_path_factory):
    from transformers import GPT2Config

    path = tmp_path_factory.mktemp("gpt2")
    GPT2Config(n_layer=1, n_head=2, n_embd=8).save_pretrained(path)
    return path


BAD_INPUTS = [
    (["--method", "qlora"], "unknown method 'qlora'"),
    (["--implementation", "both"], "unknown implementation 'both'"),
    (["--method", "full", "--implementation", "library"], "has no library implementation"),
    (["--fp16"], "--fp16 is refused: T5 overflows in float16.*use --bf16"),
    (["--max_eval_samples", "0"], "--max_eval_samples must be at least 1"),
    (["--dataset_name", "./missing/imdb"], "dataset path ./missing/imdb does not exist"),
    (["--text_column", "review"], "no column 'review'"),
    (["--model_name_or_path", "t5-small"], "cannot load the tokenizer 't5-small'.*--preset tiny"),
    (["--no_such_flag", "1"], "unrecognized arguments: --no_such_flag"),
    (["--preset", "huge"], "unknown preset 'huge'"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line_and_exit_code_2(argv, message, capsys, tmp_path):
    code = main(["--preset", "tiny", "--output_dir", str(tmp_path / "out"), *argv])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert len(error.splitlines()) == 1 and error.startswith("error: ")
    assert __import__("re").search(message, error), error
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_model_that_is_not_an_encoder_decoder_is_refused(decoder_only_model, capsys, tmp_path):
    code = main(["--preset", "tiny", "--output_dir", str(tmp_path / "out"),
                 "--model_name_or_path", str(decoder_only_model), "--tokenizer_name_or_path", "builtin:tiny-t5"])
    assert code == 2
    assert "is a gpt2 model, not an encoder-decoder" in capsys.readouterr().err


def test_json_config_with_an_unknown_key_is_refused(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"preset": "tiny", "lerning_rate": 0.1}))
    assert main([str(config)]) == 2
    assert "unknown key 'lerning_rate'; did you mean 'learning_rate'?" in capsys.readouterr().err


def test_bad_input_in_a_real_process_prints_no_traceback(tmp_path):
    result = run_cli("--preset", "tiny", "--method", "qlora", "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown method 'qlora'; choose one of " + ", ".join(__import__("hf_peft_suite").methods.METHODS)
        + " (--method NAME)"
    ]


def test_real_imdb_slice_with_the_real_tokenizer_and_random_t5_small(shared_imdb, t5_small_path, tmp_path):
    """The README's check on real data: ../shared IMDB, the real t5-small tokenizer, random weights, 2 steps."""
    results = run_experiment(
        dataset_name=str(shared_imdb), model_name_or_path=str(t5_small_path), random_init=True,
        max_train_samples=16, max_eval_samples=10, max_steps=2, per_device_train_batch_size=8,
        per_device_eval_batch_size=10, output_dir=str(tmp_path / "imdb"),
    )
    assert results["parameters"]["total"] == 60_506_624
    assert results["random_init"] is True
    assert results["history"][-1]["eval_num_scored"] == 10
    assert results["max_new_tokens"] == 2  # "positive" / "negative" are single T5 pieces, then </s>


def test_python_api_pieces_work_alone(tiny_tokenizer):
    from hf_peft_suite import build_model, count_parameters, load_data

    data = load_data(dataset_name="builtin:tiny-sentiment", tokenizer=tiny_tokenizer, max_train_samples=8)
    model, tokenizer = build_model("builtin:tiny-t5", method="full")
    assert len(data.train_dataset) == 8
    assert count_parameters(model)["trainable"] == 169_216
