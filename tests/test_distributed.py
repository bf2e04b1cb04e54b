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
import subprocess
import time

import pytest

from .conftest import REPO_ROOT
from .helpers import (
    ACCELERATE_CPU_CONFIG,
    DDP_EVAL_BATCH,
    DDP_EVAL_EXAMPLES,
    DDP_WORLD_SIZE,
    TORCHRUN,
    TWO_PROCESS_BATCH_WARNING,
    cli_environment,
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
    assert (results["global_train_batch_size"], results["engine"]) == (64, "ddp")  # 32 per process x 2
    assert TWO_PROCESS_BATCH_WARNING in result.stderr.splitlines()
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
    result = run_cli("--preset", "tiny", "--use_cpu", "false", "--max_steps", "2", "--max_train_samples", "64",
                     "--max_eval_samples", "8", "--output_dir", output_dir, launcher=TORCHRUN)
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
                "fsdp_t5.yaml": ("FSDP", False), "fsdp1_t5.yaml": ("FSDP", False),
                "deepspeed_zero2.yaml": ("DEEPSPEED", False),
                "deepspeed_zero3.yaml": ("DEEPSPEED", False)}[config]
    assert (loaded.distributed_type.value, loaded.use_cpu) == expected
    assert loaded.mixed_precision == ("bf16" if "deepspeed" in config else "no")
    if config.startswith("fsdp"):  # FSDP2 in fsdp_t5.yaml (accelerate >= 1.15), FSDP1 for older accelerate
        assert loaded.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "T5Block"
        assert loaded.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # required (launch.py)
        assert loaded.fsdp_config["fsdp_version"] == (2 if config == "fsdp_t5.yaml" else 1)
    if config == "deepspeed_zero3.yaml":
        assert loaded.deepspeed_config["zero3_save_16bit_model"] is True


# What fails on one process only: a GPU out of memory there, simulated (no GPU here) by making every training step of
# process 1 raise the error CUDA raises. Everything else is the real command under torchrun.
OUT_OF_MEMORY_ON_PROCESS_1 = """
import os, sys
import torch
from hf_peft_suite.trainer import GenerationAccuracyTrainer

def out_of_memory(self, *args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated on process 1)")

if os.environ["RANK"] == "1":
    GenerationAccuracyTrainer.training_step = out_of_memory
from hf_peft_suite.cli import main
sys.exit(main())
"""


@pytest.mark.slow
def test_a_cell_failing_on_one_process_ends_every_process_with_one_line_within_a_minute(tmp_path):
    """Process 0 waits for process 1 in DDP's gradient all-reduce; process 1 cannot skip to the next cell (it would
    meet process 0 in another collective, and both would wait out the 30-minute timeout). The comparison stops on
    both, one line each, and the failing cell's error.json records the failure."""
    script, output_dir = tmp_path / "out_of_memory_on_process_1.py", tmp_path / "compare"
    script.write_text(OUT_OF_MEMORY_ON_PROCESS_1)
    command = [*TORCHRUN, str(script), "--method", "all", "--implementation", "scratch", "--preset", "tiny",
               "--max_steps", "2", "--max_train_samples", "64", "--max_eval_samples", "8", "--output_dir",
               str(output_dir)]
    # Without the stop, the command would wait out the 30-minute collective timeout: 240 s is far from both.
    result = subprocess.run(command, cwd=REPO_ROOT, env=cli_environment(), capture_output=True, text=True, timeout=240)
    ended = time.time()
    assert result.returncode != 0
    failed_at = (output_dir / "full-scratch" / "error.json").stat().st_mtime  # written as process 1 fails
    assert ended - failed_at < 60, f"the processes ended {ended - failed_at:.0f} s after the failure"

    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert 1 <= len(errors) <= WORLD_SIZE, result.stderr[-3000:]  # one per process (torchrun may stop process 0 first)
    assert any(re.fullmatch(r"error: full/scratch failed on process 1 of 2 \(OutOfMemoryError: CUDA out of memory\. "
                            r"Tried to allocate 2\.00 GiB \(simulated on process 1\)\); the other processes cannot go "
                            r"on without it, so the comparison stops .*", line) for line in errors), errors
    assert "Traceback" not in result.stderr or "hf_peft_suite/" not in result.stderr  # no traceback of ours
    record = json.loads((output_dir / "full-scratch" / "error.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert "(process 1)" in record["error"] and "training_step" in record["traceback"]
    assert not (output_dir / "prompt_tuning-scratch").exists()  # no process went on to the next cell
