"""Resume: a run stopped after 4 steps and resumed from its checkpoint ends exactly as an uninterrupted run.

The stop is a ``KeyboardInterrupt`` raised as step 5 begins (what Ctrl-C does at that moment): nothing after
``checkpoint-4`` is written. The resumed run must end with bit-identical trainable weights (tolerance 0 on CPU) and
the same evaluation metrics, epoch by epoch. Checkpoints hold only the trainable weights (safetensors) plus the
optimizer/scheduler/RNG state, for the full model, a hand-written delta, a peft adapter and an AdapterHub adapter.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_peft_suite.experiment import run_experiment
from hf_peft_suite.tiny import build_tiny_tokenizer
from hf_peft_suite.weights import tensor_shapes

from .conftest import cell_param

STOP_AFTER = 4  # steps; 3 steps per epoch, so the stop falls inside epoch 2
RUN = dict(preset="tiny", max_train_samples=96, num_train_epochs=3, max_eval_samples=32, per_device_eval_batch_size=32,
           save_strategy="steps", save_steps=2, group_by_length=True,  # length-grouped batches, reseeded per epoch
           figures=False)  # (the figures are test_figures.py's; each takes about 0.2 s)
CELLS = [
    pytest.param("full", "scratch", id="full"),
    pytest.param("lora", "scratch", id="lora-scratch"),
    pytest.param("lora", "library", id="lora-peft"),
    pytest.param("ia3", "scratch", id="ia3-scratch"),
    pytest.param("ia3", "library", id="ia3-peft"),
    pytest.param("prefix_tuning", "scratch", id="prefix-scratch"),
    pytest.param("prefix_tuning", "library", id="prefix-peft"),
    cell_param("adapter", "library", id="adapter-adapterhub"),
]
# What each kind of cell writes for its trainable weights in a checkpoint (beside Trainer's own state files).
WEIGHT_FILES = {
    ("full", "scratch"): {"config.json", "generation_config.json", "model.safetensors"},
    ("lora", "scratch"): {"config.json", "model.safetensors"},
    ("lora", "library"): {"adapter_config.json", "adapter_model.safetensors", "README.md"},
    ("ia3", "scratch"): {"config.json", "model.safetensors"},
    ("ia3", "library"): {"adapter_config.json", "adapter_model.safetensors", "README.md"},
    ("prefix_tuning", "scratch"): {"config.json", "model.safetensors"},
    ("prefix_tuning", "library"): {"adapter_config.json", "adapter_model.safetensors", "README.md"},
    ("adapter", "library"): {"adapter_config.json", "adapter.safetensors"},
}
TRAINER_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"}
EVAL_METRICS = ("eval_loss", "eval_accuracy", "eval_macro_f1", "eval_invalid_rate", "eval_num_scored")


class StopAtStep(TrainerCallback):
    """Raise ``KeyboardInterrupt`` when step ``step + 1`` begins, after ``checkpoint-<step>`` is written."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def trained_weights(output_dir):
    model_dir = output_dir / "model"
    return {f"{path.name}:{name}": tensor for path in sorted(model_dir.glob("*.safetensors"))
            for name, tensor in load_file(path).items()}


@pytest.mark.slow
@pytest.mark.parametrize(("method", "implementation"), CELLS)
def test_a_stopped_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_run(method, implementation, tmp_path):
    cell = dict(RUN, method=method, implementation=implementation)
    whole = run_experiment(output_dir=str(tmp_path / "whole"), **cell)

    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(output_dir=str(stopped), callbacks=[StopAtStep(STOP_AFTER)], **cell)
    assert not (stopped / "results.json").exists() and not (stopped / "model").exists()
    checkpoint = stopped / f"checkpoint-{STOP_AFTER}"

    # The checkpoint holds the trainable weights, and only them, plus the optimizer state of only them.
    files = {path.name for path in checkpoint.iterdir()}
    tokenizer_files = set(build_tiny_tokenizer().save_pretrained(str(tmp_path / "tokenizer")))
    tokenizer_files = {name.rsplit("/", 1)[-1] for name in tokenizer_files}
    assert files == WEIGHT_FILES[(method, implementation)] | TRAINER_FILES | tokenizer_files
    saved = sum(math.prod(shape) for path in checkpoint.glob("*.safetensors")
                for shape in tensor_shapes(str(path)).values())
    assert saved == whole["parameters"]["trainable"]
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert sum(state["exp_avg"].numel() for state in optimizer["state"].values()) == whole["parameters"]["trainable"]

    resumed = run_experiment(output_dir=str(stopped), resume_from_checkpoint=str(checkpoint), **cell)

    expected, actual = trained_weights(tmp_path / "whole"), trained_weights(stopped)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)  # tolerance 0: bit-identical
    assert [row["step"] for row in resumed["history"]] == [row["step"] for row in whole["history"]] == [3, 6, 9]
    for before, after in zip(whole["history"], resumed["history"]):
        assert {key: after[key] for key in EVAL_METRICS} == {key: before[key] for key in EVAL_METRICS}
    # Epochs the interruption did not cut have the same logged training loss; the cut epoch's averages only the
    # steps after the resume (Trainer keeps no running loss in a checkpoint: docs/checkpoints.md).
    assert resumed["history"][0]["train_loss"] == whole["history"][0]["train_loss"]
    assert resumed["history"][2]["train_loss"] == whole["history"][2]["train_loss"]


def test_length_grouped_order_depends_on_the_seed_and_the_epoch_only():
    """Each epoch its own length-grouped order; the same order again when an epoch is resumed part-way."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from hf_peft_suite.trainer import EpochSeededLengthGroupedSampler

    epoch = [0.0]
    sampler = EpochSeededLengthGroupedSampler(
        LengthGroupedSampler(4, lengths=[(7 * index) % 23 + 1 for index in range(64)]), seed=3, epoch_of=lambda: epoch[0]
    )
    first = list(sampler)
    torch.rand(5)  # the global generator moves on, as training does
    assert list(sampler) == first and sorted(first) == list(range(64))
    epoch[0] = 1.0
    second = list(sampler)
    assert second != first
    epoch[0] = 1.0 + 1 / 3  # resumed a third into epoch 1
    assert list(sampler) == second
