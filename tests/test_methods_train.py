"""Every cell trains through the real pipeline on the tiny preset, as the README's main job runs it (``--preset tiny
--method all``: CLI arguments, recommended settings, data, GenerationAccuracyTrainer): full fine-tuning, LoRA, (IA)³
and adapters well above chance; twins trained from the same seed follow one curve.

The runs are the session's ``main_job`` (conftest.py), trained once and read here; test_console.py checks what it
printed. Every cell is listed, so a cell whose library is missing shows as a skip with its reason.
"""

from __future__ import annotations

import pytest

from .conftest import ALL_CELLS, cell_param
from .helpers import read_results

pytestmark = pytest.mark.slow  # every cell is trained first

CHANCE = 0.5
# Methods that only steer what a frozen base already computes from the input: on the tiny *random* base the input's
# sentiment barely reaches them (a soft prompt in front of a random encoder; a prefix in the decoder's self-attention,
# which sees the input only through frozen random cross-attention), so accuracy may stay near chance.
STEERING_ONLY = ("prompt_tuning", "prefix_tuning")


@pytest.fixture(scope="module")
def trained(finished_runs):
    """The results of the main job's run of every installed cell."""
    return {cell: read_results(folder) for cell, folder in finished_runs.items()}


@pytest.mark.parametrize(("method", "implementation"),
                         [cell_param(*cell) for cell in ALL_CELLS if cell[0] not in STEERING_ONLY])
def test_cell_learns_the_tiny_task_well_above_chance(trained, method, implementation):
    results = trained[(method, implementation)]
    assert results["best_accuracy"] >= CHANCE + 0.2, results["history"]


@pytest.mark.parametrize(("method", "implementation"),
                         [cell_param(*cell) for cell in ALL_CELLS if cell[0] in STEERING_ONLY])
def test_prompt_and_prefix_tuning_loss_falls_on_a_random_frozen_base(trained, method, implementation):
    """A soft prompt or a decoder prefix on a *randomly initialised* frozen base has little to steer (the tiny base is
    not pretrained), so accuracy may stay near chance; the training loss must still fall."""
    losses = [row["train_loss"] for row in trained[(method, implementation)]["history"]]
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize(("method", "implementation"),
                         [cell_param(method, "library", id=method) for method, implementation in ALL_CELLS
                          if implementation == "library" and (method, "scratch") in ALL_CELLS])
def test_scratch_and_library_twins_train_alike(trained, method, implementation):
    """Same seed, same data, same trainer: the two implementations end within a few points of each other."""
    scratch, library = trained[(method, "scratch")], trained[(method, implementation)]
    assert scratch["parameters"]["trainable"] == library["parameters"]["trainable"]
    assert abs(scratch["best_accuracy"] - library["best_accuracy"]) <= 0.05
    assert scratch["history"][0]["train_loss"] == pytest.approx(library["history"][0]["train_loss"], rel=0.05)


@pytest.mark.parametrize(("method", "implementation"), [cell_param(*cell) for cell in ALL_CELLS if cell[0] != "full"])
def test_peft_artifacts_are_a_small_fraction_of_the_full_model(trained, method, implementation):
    full = trained[("full", "scratch")]
    assert trained[(method, implementation)]["artifact_size_bytes"] < full["artifact_size_bytes"] / 3
