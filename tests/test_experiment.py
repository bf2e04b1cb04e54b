"""End to end: the tiny preset learns, JSON configs run, results.json holds what it promises (bad input: test_bad_input)."""

from __future__ import annotations

import json
import re

import pytest

from hf_peft_suite.arguments import load_preset, parse_arguments
from hf_peft_suite.cli import main
from hf_peft_suite.experiment import run_experiment

from .conftest import readme_python_example, requires_shared


@pytest.fixture(scope="module")
def tiny_results(readme_example):
    """The tiny preset as a user runs it through the Python API: the README's example (the session's
    ``readme_example``, a fresh interpreter), which prints the results' best accuracy and parameters and predicts."""
    result, output_dir = readme_example
    assert 'results = hf_peft_suite.run_experiment(preset="tiny", output_dir="outputs/tiny-full")' in \
        readme_python_example()
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, output_dir


@pytest.mark.slow
def test_tiny_preset_learns_well_above_chance(tiny_results):
    _, output_dir = tiny_results
    results = json.loads((output_dir / "results.json").read_text())
    assert results["best_accuracy"] > 0.9
    assert results["history"][0]["train_loss"] > results["history"][-1]["train_loss"]


@pytest.mark.slow
def test_results_json_holds_config_history_parameters_runtimes_and_versions(tiny_results):
    printed, output_dir = tiny_results
    saved = json.loads((output_dir / "results.json").read_text())
    # What run_experiment returned, as the example printed it: print(results["best_accuracy"], results["parameters"])
    assert f"{saved['best_accuracy']} {saved['parameters']}" in printed.splitlines()
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


@pytest.mark.slow
def test_saved_full_model_reloads_with_identical_generations(tiny_results):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    _, output_dir = tiny_results
    model = AutoModelForSeq2SeqLM.from_pretrained(output_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(output_dir / "model")
    inputs = tokenizer(["a wonderful and moving film", "a dull and tedious film"], return_tensors="pt", padding=True)
    generated = model.generate(**inputs, max_new_tokens=2)
    assert tokenizer.batch_decode(generated, skip_special_tokens=True) == ["positive", "negative"]


def test_running_alone_means_the_reference_recipe():
    from hf_peft_suite.methods import METHODS

    defaults, seed = parse_arguments([]).to_dict(), parse_arguments(["--preset", "seed"]).to_dict()
    assert defaults["training"]["learning_rate"] == METHODS["full"].default_learning_rate == 1e-5
    assert seed["experiment"].pop("preset") == "seed" and defaults["experiment"].pop("preset") is None
    # transformers 4.57's default logging_dir holds the time the arguments were built, to the second (5.x has none)
    for training in (defaults["training"], seed["training"]):
        if training.get("logging_dir"):
            training["logging_dir"] = re.sub(r"/runs/\w{3}\d\d_\d\d-\d\d-\d\d_", "/runs/TIME_", training["logging_dir"])
    assert defaults == seed  # the seed preset names the defaults; it sets nothing
    assert set(load_preset("seed")) == {"_source"}
    defaults = parse_arguments([])
    assert defaults.model.model_name_or_path == "t5-small" and defaults.data.dataset_name == "imdb"
    assert defaults.training.per_device_train_batch_size == 32 and defaults.training.num_train_epochs == 10
    assert defaults.training.lr_scheduler_type == "constant" and defaults.training.eval_strategy == "epoch"
    assert defaults.experiment.method == "full" and defaults.data.max_source_length == 256
    assert defaults.data.clean_text is True and defaults.training.seed == 42


@pytest.mark.parametrize("method", ["full", "prompt_tuning", "adapter", "lora", "ia3", "prefix_tuning"])
def test_a_method_without_a_learning_rate_gets_its_own_and_says_where_it_comes_from(method):
    from hf_peft_suite.methods import METHODS

    parsed = parse_arguments(["--method", method])
    assert parsed.training.learning_rate == METHODS[method].default_learning_rate
    assert parsed.origins["learning_rate"] == "method default"
    given = parse_arguments(["--method", method, "--learning_rate", "0.002"])
    assert given.training.learning_rate == 0.002 and given.origins["learning_rate"] == "command line"
    # A preset's per-method section beats the method default; a flag beats the preset.
    tiny = parse_arguments(["--method", method, "--preset", "tiny"])
    assert tiny.training.learning_rate == {"full": 3e-3, "lora": 0.01, "adapter": 0.01, "prompt_tuning": 0.3,
                                           "ia3": 0.1, "prefix_tuning": 0.1}[method]
    assert tiny.origins["learning_rate"] == "preset tiny"


def test_training_arguments_built_directly_have_a_real_learning_rate(tmp_path):
    """docs/api.md builds TrainingArguments for GenerationAccuracyTrainer: AdamW must not get lr=None."""
    from hf_peft_suite.arguments import TrainingArguments

    assert TrainingArguments(output_dir=str(tmp_path), use_cpu=True).learning_rate == 1e-5


def test_json_and_keyword_values_are_typed_and_checked_as_flags_are(tmp_path):
    from hf_peft_suite.errors import UsageError

    config = tmp_path / "run.json"
    config.write_text(json.dumps({"preset": "tiny", "lora_r": "16", "label_words": "negative", "bf16": "false",
                                  "learning_rate": 2e-3}))
    parsed = parse_arguments([str(config), "--method", "lora"])
    assert parsed.options.lora_r == 16 and parsed.data.label_words == ["negative"] and parsed.training.bf16 is False
    assert parsed.origins["lora_r"] == f"config file {config}"
    for bad, message in (({"lora_r": 8.5}, "lora_r = 8.5 is not valid"),
                         ({"clean_text": "sometimes"}, "clean_text = 'sometimes' is not valid"),
                         ({"adapter_config": "triple"}, "adapter_config = 'triple' is not one of seq_bn, double_seq_bn")):
        config.write_text(json.dumps(bad))
        with pytest.raises(UsageError, match=message):
            parse_arguments([str(config)])
    with pytest.raises(UsageError, match="keyword arguments: num_train_epochs = 'ten' is not valid"):
        parse_arguments([], num_train_epochs="ten")


def test_flags_override_json_config_which_overrides_preset(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"preset": "tiny", "num_train_epochs": 2, "seed": 5}))
    parsed = parse_arguments([str(config), "--seed", "7"])
    assert parsed.training.num_train_epochs == 2  # JSON over preset (4)
    assert parsed.training.seed == 7  # flag over JSON
    assert parsed.model.model_name_or_path == "builtin:tiny-t5"  # from the preset


def test_json_config_runs_and_a_second_run_never_overwrites_the_first(tmp_path, capsys):
    output_dir = tmp_path / "run"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"preset": "tiny", "max_eval_samples": 64}))
    assert main([str(config), "--output_dir", str(output_dir), "--max_steps", "4"]) == 0
    assert "best valid_acc" in capsys.readouterr().out
    saved = (output_dir / "results.json").read_bytes()

    assert main([str(config), "--output_dir", str(output_dir), "--max_steps", "4"]) == 2
    error = capsys.readouterr().err
    assert error.strip().splitlines() == [
        f"error: --output_dir {output_dir} already holds a previous run; choose a new --output_dir, resume it with "
        f"--resume_from_checkpoint, or pass --overwrite_output_dir to replace it"
    ]
    assert "Traceback" not in error
    assert (output_dir / "results.json").read_bytes() == saved


@pytest.mark.slow
@requires_shared
def test_real_imdb_slice_with_the_real_tokenizer_and_random_t5_small(shared_imdb, t5_small_path, tmp_path):
    """The README's check on real data: ../shared IMDB, the real t5-small tokenizer, random weights, one step."""
    results = run_experiment(
        dataset_name=str(shared_imdb), model_name_or_path=str(t5_small_path), random_init=True,
        max_train_samples=2, max_eval_samples=10, max_steps=1, per_device_train_batch_size=2,
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
