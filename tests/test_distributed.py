"""Two real processes on CPU (gloo): ``torchrun`` and ``accelerate launch`` train every cell / peft's LoRA cell.

The evaluation set has 37 examples: with 2 processes x 8 per batch, the last round of batches is padded with repeated
examples. Each run must say it ran with world size 2, score each of the 37 examples exactly once (in the order of the
evaluation set), and reach the accuracy and the loss that a single-process evaluation of its saved model reaches,
example by example. The launches are the session's (``torchrun_every_cell``, ``accelerate_lora_library`` in
conftest.py): test_console.py reads the same ones for what they print.
"""

from __future__ import annotations

import json
import re

import pytest

from .helpers import (
    ACCELERATE_CPU_CONFIG,
    DDP_EVAL_BATCH,
    DDP_EVAL_EXAMPLES,
    DDP_WORLD_SIZE,
    TORCHRUN,
    evaluate_in_one_process,
    load_trained_model,
    read_results,
    run_cli,
)

EVAL_EXAMPLES, EVAL_BATCH, WORLD_SIZE = DDP_EVAL_EXAMPLES, DDP_EVAL_BATCH, DDP_WORLD_SIZE


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launcher", "method", "implementation"),
    [("torchrun", "lora", "scratch"), ("accelerate", "lora", "library")],
    ids=["torchrun-lora-scratch", "accelerate-lora-peft"],
)
def test_two_processes_score_every_example_once_as_one_process_does(launcher, method, implementation,
                                                                    torchrun_every_cell, accelerate_lora_library,
                                                                    tmp_path):
    """torchrun trained every cell (``--method all``): its LoRA scratch cell is checked here; accelerate launch
    trained peft's LoRA cell alone."""
    if launcher == "torchrun":
        result, every_cell = torchrun_every_cell
        output_dir = every_cell / f"{method}-{implementation}"
    else:
        result, output_dir = accelerate_lora_library
    assert result.returncode == 0, result.stderr[-3000:]

    results = read_results(output_dir)
    assert (results["method"], results["implementation"]) == (method, implementation)
    assert results["world_size"] == WORLD_SIZE
    assert results["num_eval_examples"] == EVAL_EXAMPLES
    assert [row["eval_num_scored"] for row in results["history"]] == [EVAL_EXAMPLES, EVAL_EXAMPLES]
    distributed = json.loads((output_dir / "eval_predictions.json").read_text())

    metrics, single, references = evaluate_in_one_process(
        load_trained_model(output_dir), output_dir, tmp_path, batch_size=EVAL_BATCH
    )
    assert metrics["eval_num_scored"] == EVAL_EXAMPLES
    # Every example scored once, in order: the references of the 2-process run are the evaluation set's own.
    assert distributed["references"] == references
    assert distributed["predictions"] == single["predictions"]  # example by example
    assert results["final_metrics"]["eval_accuracy"] == metrics["eval_accuracy"]
    assert results["final_metrics"]["eval_macro_f1"] == metrics["eval_macro_f1"]
    assert 0.5 < metrics["eval_accuracy"] < 1.0, metrics  # a model that has learned something, not a constant
    # The loss too: the padded repeats are dropped from it as from the predictions (it used to count them: 0.4761 in
    # one process against 0.4742 in two on 101 examples). Batches differ between the runs, so only rounding remains.
    assert abs(results["final_metrics"]["eval_loss"] - metrics["eval_loss"]) <= 1e-5, (results, metrics)


@pytest.mark.slow
def test_processes_launched_together_that_would_train_alone_are_refused(tmp_path):
    """Without --use_cpu on a machine without GPUs, torchrun's processes form no group with newer accelerate releases
    (each would train alone and overwrite the others' files): refused, one line per process, nothing written. The
    lowest supported accelerate (1.3) forms a gloo group there anyway: then they train together, as one run."""
    output_dir = tmp_path / "run"
    result = run_cli("--preset", "tiny", "--use_cpu", "false", "--max_steps", "2", "--output_dir", output_dir,
                     launcher=TORCHRUN)
    if result.returncode == 0:  # one group of 2 processes: one run, trained together
        assert json.loads((output_dir / "results.json").read_text())["world_size"] == WORLD_SIZE
        return
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert 1 <= len(errors) <= WORLD_SIZE  # one line per process (torchrun may stop the other before it prints)
    assert all(re.fullmatch(r"error: 2 processes were launched \(WORLD_SIZE=2\) but each trains alone \(world size "
                            r"1\).*--use_cpu true.*", line) for line in errors), errors
    assert "hf_peft_suite/" not in result.stderr  # torchrun prints its own ChildFailedError, never one of ours
    assert not output_dir.exists()


@pytest.mark.parametrize("config", sorted(p.name for p in ACCELERATE_CPU_CONFIG.parent.glob("*.yaml")))
def test_every_shipped_accelerate_config_is_one_accelerate_accepts(config):
    """Only the CPU config is launched here (no GPU); the others must at least load with accelerate's own loader."""
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(ACCELERATE_CPU_CONFIG.parent / config))
    expected = {"cpu_2_processes.yaml": ("MULTI_GPU", True), "multi_gpu.yaml": ("MULTI_GPU", False),
                "fsdp_t5.yaml": ("FSDP", False), "deepspeed_zero2.yaml": ("DEEPSPEED", False),
                "deepspeed_zero3.yaml": ("DEEPSPEED", False)}[config]
    assert (loaded.distributed_type.value, loaded.use_cpu) == expected
    assert loaded.mixed_precision == ("bf16" if "deepspeed" in config else "no")
    if config == "fsdp_t5.yaml":
        assert loaded.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "T5Block"
        assert loaded.fsdp_config["fsdp_use_orig_params"] is True
    if config == "deepspeed_zero3.yaml":
        assert loaded.deepspeed_config["zero3_save_16bit_model"] is True

