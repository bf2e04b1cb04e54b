"""The Trainer flags users reach for, on the cells where they matter: each run ends and the flag had its effect
(compared with the same run without it: the training curve, the optimizer steps, the checkpoints left, the generated
length, the loss), or it is refused with one ``error:`` line before anything is written.

Cells: each flag runs on at least one scratch and one library cell, and on every cell whose format or family changes
what the flag touches (the checkpoint format for ``--load_best_model_at_end``, peft's prompt-learning models for
NEFTune, the two-pass evaluation of peft prefix tuning); label smoothing and gradient checkpointing, which failed by
family and format, on every cell. Whole runs are tiny (the built-in tiny T5 and sentiment data: 32 training and 16
evaluation examples, batches of 8, 4 optimizer steps, the loss logged at every step) and in-process
(``hf_peft_suite.cli.main``, as the command line runs them); the run of each cell without a flag is shared
(:func:`run`'s cache). Where a flag is checked on every cell, two steps go through the experiment's own stages without
writing a run folder (:func:`train_in_memory`). A missing optional package is what this machine has (none of the
trackers or special optimizers is installed here); nothing is faked.

Cost: about 35 tiny runs and 24 two-step trainings; every test that trains is marked slow (the quick loop keeps the
refusals).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from hf_peft_suite.arguments import TrainingArguments, parse_arguments
from hf_peft_suite.cli import main
from hf_peft_suite.compat import installed_version
from hf_peft_suite.errors import UsageError
from hf_peft_suite.experiment import build, make_trainer, prepare, run_experiment
from hf_peft_suite.quiet import library_output
from hf_peft_suite.runs import evaluate_run
from hf_peft_suite.training_flags import check_optimizer, check_report_to

from .conftest import ALL_CELLS, requires_adapterhub
from .helpers import assert_refused, read_results

LATEST = int(installed_version("transformers").split(".")[0]) >= 5
# (--no_figures: the figures are test_figures.py's; drawing one takes about 0.2 s, a fifth of a run here)
QUICK = ["--preset", "tiny", "--max_train_samples", "32", "--per_device_train_batch_size", "8",
         "--max_eval_samples", "16", "--max_steps", "4", "--logging_strategy", "steps", "--logging_steps", "1",
         "--no_figures"]
EVAL_KEYS = ("eval_accuracy", "eval_macro_f1", "eval_invalid_rate", "eval_num_scored")


def cell(method: str, implementation: str, *options: str):
    """A pytest parameter for one cell (``options``: the method's own flags, e.g. DoRA)."""
    marks = [requires_adapterhub] if (method, implementation) == ("adapter", "library") else []
    name = f"{method}-{implementation}" + ("-" + "-".join(option.lstrip("-") for option in options) if options else "")
    return pytest.param((method, implementation, *options), id=name, marks=marks)


FULL, LORA, PEFT_LORA = cell("full", "scratch"), cell("lora", "scratch"), cell("lora", "library")
ADAPTERHUB, PEFT_PROMPT = cell("adapter", "library"), cell("prompt_tuning", "library")


# ------------------------------------------------------------------------------------------------ running
@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flag_runs")


_RUNS: dict[tuple, Path] = {}


def run(root: Path, cell_spec: tuple, *flags: str) -> dict:
    """The results of ``cell_spec`` run with :data:`QUICK` and ``flags`` (each combination runs once per module);
    ``results["_dir"]`` is its output folder."""
    method, implementation, *options = cell_spec
    key = (root, cell_spec, flags)
    if key not in _RUNS:
        output_dir = root / f"run{len(_RUNS)}"
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            code = main([*QUICK, "--method", method, "--implementation", implementation, *options, *flags,
                         "--output_dir", str(output_dir)])
        assert code == 0, errors.getvalue()[-2000:]
        _RUNS[key] = output_dir
    return {**read_results(_RUNS[key]), "_dir": _RUNS[key]}


def step_losses(results: dict) -> list[float]:
    """The training loss logged at each step (QUICK logs every step)."""
    return [entry["loss"] for entry in results["log_history"] if "loss" in entry]


def eval_rows(results: dict) -> list[dict]:
    return [{key: row[key] for key in EVAL_KEYS} for row in results["history"]]


def predictions(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "eval_predictions.json").read_text())


# -------------------------------------------------------------------------------- flags that change the curve
CURVE_FLAGS = {
    "adafactor": ["--optim", "adafactor"],
    "weight_decay": ["--weight_decay", "0.5"],
    "neftune": ["--neftune_noise_alpha", "5"],
    "no_group_by_length": ["--group_by_length", "false"],  # the tiny preset groups by length
    "data_seed": ["--data_seed", "1"],
    "seed": ["--seed", "1"],
    "max_grad_norm_0": ["--max_grad_norm", "0"],
}


@pytest.mark.slow
@pytest.mark.parametrize("flag", list(CURVE_FLAGS))
@pytest.mark.parametrize("cell_spec", [LORA, PEFT_LORA])
def test_flags_that_change_the_training_curve(flag, cell_spec, runs_root):
    """Each of these trains differently from the run without it, and the run ends with its model and results."""
    plain, changed = run(runs_root, cell_spec), run(runs_root, cell_spec, *CURVE_FLAGS[flag])
    assert len(step_losses(changed)) == 4 and all(math.isfinite(loss) for loss in step_losses(changed))
    assert step_losses(changed) != step_losses(plain)
    assert (changed["_dir"] / "model").is_dir() and changed["final_metrics"]["eval_num_scored"] == 16
    if flag == "max_grad_norm_0":  # unclipped, where the run without it clipped its gradients to norm 1
        assert max(entry["grad_norm"] for entry in plain["log_history"] if "grad_norm" in entry) > 1.0
    if flag == "data_seed":  # the subsets and their order come from the data seed; the weights from the seed
        assert changed["config"]["training"]["data_seed"] == 1 and changed["num_train_examples"] == 32


@pytest.mark.slow
def test_neftune_noise_reaches_the_embeddings_of_peft_prompt_learning_models(runs_root):
    """Trainer's own NEFTune looks for a peft model's embeddings where prompt-learning models have none."""
    cell_spec = PEFT_PROMPT.values[0]
    plain, noisy = run(runs_root, cell_spec), run(runs_root, cell_spec, "--neftune_noise_alpha", "5")
    assert step_losses(noisy) != step_losses(plain)
    assert step_losses(noisy)[0] != step_losses(plain)[0]  # the noise is in the very first forward pass


@pytest.mark.slow
def test_gradient_accumulation_takes_one_optimizer_step_per_two_batches(runs_root):
    for cell_spec in (LORA.values[0], PEFT_LORA.values[0]):
        plain = run(runs_root, cell_spec)
        accumulated = run(runs_root, cell_spec, "--gradient_accumulation_steps", "2")
        # 4 batches an epoch: 4 optimizer steps without, 2 with; --max_steps 4 then spans two epochs
        assert [(row["epoch"], row["step"]) for row in plain["history"]] == [(1.0, 4)]
        assert [(row["epoch"], row["step"]) for row in accumulated["history"]] == [(1.0, 2), (2.0, 4)]


# ----------------------------------------------------------------------------- flags read from the logs
@pytest.mark.slow
@pytest.mark.parametrize("cell_spec", [LORA, PEFT_LORA, ADAPTERHUB])
def test_schedules_step_evaluation_checkpoints_and_counters(cell_spec, runs_root):
    """One run with the flags whose effect shows in what it logs and leaves: a cosine schedule after 2 warm-up steps,
    evaluation and checkpoints every 2 steps with at most one kept, an evaluation before training, 6 steps over
    1.5 epochs, only the model in checkpoints, the input tokens counted."""
    results = run(runs_root, cell_spec, "--max_steps", "6", "--lr_scheduler_type", "cosine", "--warmup_steps", "2",
                  "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
                  "--save_total_limit", "1", "--save_only_model", "true", "--eval_on_start", "true",
                  "--include_num_input_tokens_seen", "true")
    logs = [entry for entry in results["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4, 5, 6]  # every step's loss is kept
    rates, peak = [entry["learning_rate"] for entry in logs], results["learning_rate"]
    top = rates.index(max(rates))  # the rate of each step: up for 2 warm-up steps, then the cosine down from the peak
    assert top in (1, 2) and rates[top] == pytest.approx(peak) and rates[0] < rates[top]
    assert all(later < earlier for earlier, later in zip(rates[top:], rates[top + 1:])) and rates[-1] < 0.2 * peak
    seen = [entry["num_input_tokens_seen"] for entry in logs]
    assert seen[0] > 0 and all(later > earlier for earlier, later in zip(seen, seen[1:]))
    assert [row["step"] for row in results["history"]] == [0, 2, 4, 6] and results["history"][-1]["epoch"] == 1.5
    checkpoints = sorted(path.name for path in results["_dir"].glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-6"]
    assert not (results["_dir"] / "checkpoint-6" / "optimizer.pt").exists()
    # The learning-curves figure draws the per-step training loss
    from hf_peft_suite.plots import curve_from_runs

    curve = curve_from_runs("x", results["method"], results["implementation"], [results])
    assert curve.x["train_loss"] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5] and curve.epochs == [0.0, 0.5, 1.0, 1.5]


@pytest.mark.slow
def test_per_epoch_logging_keeps_its_own_log_dicts(runs_root):
    results = run(runs_root, LORA.values[0], "--logging_strategy", "epoch", "--max_steps", "8")
    losses = [entry for entry in results["log_history"] if "loss" in entry]
    assert [entry["epoch"] for entry in losses] == [1.0, 2.0]
    assert results["log_history"][-1]["train_runtime"] > 0  # Trainer's summary dict too


# ------------------------------------------------------------------------ flags that change nothing measured
NO_RESULT_FLAGS = {
    "eval_batch_1_worker_batch_size_search": ["--per_device_eval_batch_size", "1", "--dataloader_num_workers", "1",
                                              "--auto_find_batch_size", "true", "--eval_accumulation_steps", "1"],
    "eval_batch_1000": ["--per_device_eval_batch_size", "1000"],  # larger than the evaluation set
}


@pytest.mark.slow
@pytest.mark.parametrize("flags", list(NO_RESULT_FLAGS))
@pytest.mark.parametrize("cell_spec", [LORA, PEFT_LORA])
def test_flags_that_change_no_result(cell_spec, flags, runs_root):
    """Evaluation batches of one example or of more than the whole set, a data-loading worker process, Trainer's
    batch-size search and moving predictions off the device after every evaluation batch change how the run works,
    not what it computes."""
    plain = run(runs_root, cell_spec)
    same = run(runs_root, cell_spec, *NO_RESULT_FLAGS[flags])
    assert step_losses(same) == pytest.approx(step_losses(plain), rel=1e-6)
    assert eval_rows(same) == eval_rows(plain)
    assert same["final_metrics"]["eval_loss"] == pytest.approx(plain["final_metrics"]["eval_loss"], rel=1e-5)
    assert predictions(same["_dir"]) == predictions(plain["_dir"])


# ------------------------------------------------------------------------------------------------ generation
@pytest.mark.slow
@pytest.mark.parametrize("cell_spec", [LORA, cell("prefix_tuning", "library")])  # one pass; Seq2SeqTrainer's two
def test_generation_flags_reach_generate(cell_spec, tmp_path):
    """--generation_num_beams and --generation_max_length: evaluation generates what beam search of that length
    generates, which is not what greedy search generates."""
    trainer = train_in_memory(cell_spec, tmp_path / "run", "--generation_num_beams", "2",
                              "--generation_max_length", "5")
    output = trainer.predict(trainer.eval_dataset)  # in the evaluation set's order
    generated = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    pad = trainer.processing_class.pad_token_id
    generated = torch.as_tensor(generated).clamp(min=0)  # Trainer pads across batches with -100, the pad token is 0
    batch = next(iter(trainer.get_eval_dataloader()))
    model = trainer.model.eval()
    inputs = {key: batch[key].to(trainer.args.device) for key in ("input_ids", "attention_mask")}
    with torch.no_grad():
        beams = model.generate(**inputs, num_beams=2, max_length=5)
        greedy = model.generate(**inputs, num_beams=1, max_length=5)
    assert beams.shape[1] == 5 and generated.shape[1] >= 5
    assert generated[: len(beams), :5].tolist() == beams.tolist() and (generated[:, 5:] == pad).all()
    assert beams.tolist() != greedy.tolist()


# --------------------------------------------------------------------------------------------- torch.compile
@pytest.mark.slow
@pytest.mark.parametrize("cell_spec", [LORA, PEFT_LORA])
def test_torch_compile_trains_through_the_compiled_model(cell_spec, runs_root):
    """--torch_compile: Trainer compiles the model it trains (dynamo captures its graphs), and the run trains as
    without it and saves its artifact (the compiled wrapper's ``_orig_mod.`` names stripped). The "eager" backend runs
    the captured graphs as they are: inductor, the default, takes about a minute of CPU to compile the tiny T5, which
    the suite cannot spend; what the flag changes in Trainer is the same. One scratch and one library cell: tracing
    even the tiny T5 takes 5-14 s a cell here."""
    from torch._dynamo.utils import counters

    plain = run(runs_root, cell_spec)
    graphs_before = counters["stats"]["unique_graphs"]
    try:
        compiled = run(runs_root, cell_spec, "--torch_compile", "true", "--torch_compile_backend", "eager",
                       "--max_steps", "1", "--max_eval_samples", "4", "--per_device_eval_batch_size", "4")
    finally:
        torch._dynamo.reset()
    assert counters["stats"]["unique_graphs"] > graphs_before, "dynamo captured no graph: nothing was compiled"
    assert step_losses(compiled) == pytest.approx(step_losses(plain)[:1], rel=1e-5)
    assert (compiled["_dir"] / "model").is_dir() and compiled["final_metrics"]["eval_num_scored"] == 4


# ------------------------------------------------------- gradient checkpointing and label smoothing, every cell
# Every cell there is (each method in each implementation, DoRA too): these two flags failed by family and format.
EVERY_CELL = [*(cell(*spec) for spec in ALL_CELLS),
              *(cell("lora", implementation, "--lora_use_dora", "true") for implementation in ("scratch", "library"))]


def train_in_memory(cell_spec: tuple, output_dir: Path, *flags: str):
    """The trainer of ``cell_spec`` after :data:`QUICK`'s first 2 steps with ``flags``, built by the experiment's own
    stages (``prepare``, ``build``, ``make_trainer``) and trained by Trainer, without the run folder a whole run writes
    (the whole runs above and below cover that)."""
    method, implementation, *options = cell_spec
    args = parse_arguments([*QUICK, "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no",
                            "--method", method, "--implementation", implementation, *options, *flags,
                            "--output_dir", str(output_dir)])
    with library_output(verbose=False), contextlib.redirect_stdout(io.StringIO()):
        plan = prepare(args)
        trainer = make_trainer(plan, build(plan))
        trainer.train()
    return trainer


def logged_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def smoothed_by_hand(logits: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Label smoothing (Szegedy et al. 2016): ``(1 - eps) * NLL + eps * mean over the vocabulary of -log p``,
    averaged over the label tokens."""
    log_probs, scored = torch.log_softmax(logits.float(), dim=-1), labels != -100
    nll = -log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (1 - epsilon) * nll[scored].mean() + epsilon * -log_probs.mean(-1)[scored].mean()


@pytest.mark.slow
@pytest.mark.parametrize("cell_spec", EVERY_CELL)
def test_label_smoothing_and_gradient_checkpointing_in_every_cell(cell_spec, tmp_path):
    """Label smoothing: the loss the trainer trains on is the smoothed cross-entropy of the model's logits, and
    eval_loss stays the plain one, in the one-pass evaluation and in Seq2SeqTrainer's two passes (peft prefix tuning)
    alike; it failed at the first step in every cell (T5 got no decoder input). Gradient checkpointing recomputes
    activations: the same gradients, so the same losses and trained weights (the tiny T5 has no dropout); peft's LoRA,
    DoRA and (IA)³ failed (no gradient through the checkpointed blocks of the frozen base), and on transformers 5.x
    every scratch cell did. Prefix tuning refuses it (tested below)."""
    smoothing = ["--label_smoothing_factor", "0.1"]
    smoothed = train_in_memory(cell_spec, tmp_path / "smoothed", *smoothing)
    assert len(logged_losses(smoothed)) == 2 and all(math.isfinite(loss) for loss in logged_losses(smoothed))
    batch = {key: value.to(smoothed.args.device) for key, value in next(iter(smoothed.get_eval_dataloader())).items()}
    with torch.no_grad():
        own = smoothed.model(**batch)
        trained_on = smoothed.compute_loss(smoothed.model, batch)
    assert trained_on.item() == pytest.approx(smoothed_by_hand(own.logits, batch["labels"], 0.1).item(), rel=1e-5)
    assert trained_on.item() != pytest.approx(own.loss.item(), rel=1e-3)
    eval_loss = smoothed.evaluate()["eval_loss"]
    smoothed.label_smoother = None  # the same model, evaluated by a trainer that never smoothed
    assert smoothed.evaluate()["eval_loss"] == pytest.approx(eval_loss, rel=1e-6)

    if cell_spec[0] == "prefix_tuning":
        return
    checkpointed = train_in_memory(cell_spec, tmp_path / "checkpointed", *smoothing, "--gradient_checkpointing", "true")
    assert checkpointed.model.is_gradient_checkpointing
    assert logged_losses(checkpointed) == pytest.approx(logged_losses(smoothed), rel=1e-5)
    trained = {name: parameter for name, parameter in smoothed.model.named_parameters() if parameter.requires_grad}
    again = {name: parameter for name, parameter in checkpointed.model.named_parameters() if parameter.requires_grad}
    assert trained.keys() == again.keys() and trained
    step = smoothed.args.learning_rate  # about what one Adam step moves a weight by, at most; recomputation differs in
    for name, parameter in trained.items():  # the last bits, which Adam scales up where a gradient is near zero
        torch.testing.assert_close(again[name], parameter, rtol=0, atol=0.05 * step, msg=lambda text: f"{name}: {text}")


@pytest.mark.slow
@pytest.mark.parametrize("cell_spec", [LORA, PEFT_LORA])
def test_gradient_checkpointing_trains_as_without_it(cell_spec, runs_root):
    """The whole run, from the command line: the same curve and the same evaluations as without the flag."""
    plain, checkpointed = run(runs_root, cell_spec), run(runs_root, cell_spec, "--gradient_checkpointing", "true")
    assert checkpointed["config"]["training"]["gradient_checkpointing"] is True
    assert step_losses(checkpointed) == pytest.approx(step_losses(plain), rel=1e-5)
    assert eval_rows(checkpointed) == eval_rows(plain)


@pytest.mark.parametrize("implementation", ["scratch", "library"])
def test_gradient_checkpointing_is_refused_for_prefix_tuning(implementation, tmp_path, capsys):
    flags = ["--activation_checkpointing", "true"] if LATEST else ["--gradient_checkpointing", "true"]
    for given in (["--gradient_checkpointing", "true"], flags):  # 5.x's name for it too
        assert_refused([*QUICK, "--method", "prefix_tuning", "--implementation", implementation, *given,
                        "--output_dir", tmp_path / "run"],
                       r"--method prefix_tuning does not work with --gradient_checkpointing", capsys,
                       absent=tmp_path / "run")


# ------------------------------------------------------------------------------------------- label smoothing
@pytest.mark.slow
@pytest.mark.parametrize("cell_spec", [LORA, PEFT_LORA, cell("prefix_tuning", "library")])
def test_label_smoothing_smooths_the_training_loss_and_leaves_eval_loss_plain(cell_spec, runs_root):
    """The whole run, from the command line (peft prefix tuning: Seq2SeqTrainer's two-pass evaluation): the training
    loss is the smoothed one; evaluating the saved run afresh, without smoothing, gives the same eval_loss."""
    plain, smoothed = run(runs_root, cell_spec), run(runs_root, cell_spec, "--label_smoothing_factor", "0.1")
    assert step_losses(smoothed)[0] != pytest.approx(step_losses(plain)[0], rel=1e-4)
    again = evaluate_run(smoothed["_dir"])
    assert again["eval_loss"] == pytest.approx(smoothed["final_metrics"]["eval_loss"], rel=1e-5)
    assert again["eval_accuracy"] == smoothed["final_metrics"]["eval_accuracy"]


@pytest.mark.slow
def test_label_smoothing_keeps_one_encoder_pass_per_evaluation_batch(tmp_path):
    encoder_calls = []

    class CountEvaluationEncoderCalls(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.get_encoder().register_forward_hook(
                lambda module, *_: None if module.training else encoder_calls.append(1))

    run_experiment([*QUICK, "--method", "lora", "--label_smoothing_factor", "0.1", "--per_device_eval_batch_size",
                    "4", "--output_dir", str(tmp_path / "run")], callbacks=[CountEvaluationEncoderCalls()])
    assert len(encoder_calls) == 4  # one evaluation of 16 examples in batches of 4: one encoder pass each


# ----------------------------------------------------------------------------------------------- best model
BEST = ["--max_steps", "-1", "--num_train_epochs", "3", "--eval_strategy", "epoch", "--save_strategy", "epoch",
        "--load_best_model_at_end", "true", "--metric_for_best_model", "loss", "--greater_is_better", "true"]


@pytest.mark.slow
@pytest.mark.parametrize("cell_spec", [FULL, LORA, PEFT_LORA, ADAPTERHUB, PEFT_PROMPT])
def test_the_saved_model_is_the_best_checkpoint_in_every_format(cell_spec, runs_root):
    """"Best" is the highest eval_loss here, so it is the first epoch, not the last. model/ must hold that
    checkpoint's weights in every artifact format (Trainer's loader left an AdapterHub cell at its last epoch), and
    results.json, eval_predictions.json and the model card must describe it."""
    results = run(runs_root, cell_spec, *BEST)
    history, saved = results["history"], results["saved_model"]
    assert [row["step"] for row in history] == [4, 8, 12]
    assert saved == {"epoch": 1.0, "step": 4, "checkpoint": "checkpoint-4",
                     "chosen_by": "the best eval_loss (higher is better)"}
    assert results["final_metrics"] == {key: value for key, value in history[0].items() if key.startswith("eval_")}
    assert history[0]["eval_loss"] > history[-1]["eval_loss"]  # so the last epoch's model would be told apart

    again = evaluate_run(results["_dir"], output_dir=results["_dir"].parent / f"{results['_dir'].name}-evaluated")
    assert again["eval_loss"] == pytest.approx(results["final_metrics"]["eval_loss"], rel=1e-6)
    assert {key: again[key] for key in EVAL_KEYS} == {key: results["final_metrics"][key] for key in EVAL_KEYS}
    evaluated = predictions(results["_dir"].parent / f"{results['_dir'].name}-evaluated")
    assert predictions(results["_dir"])["predictions"] == evaluated["predictions"]
    card = (results["_dir"] / "model" / "README.md").read_text()
    assert "this model: epoch 1, the best eval_loss (higher is better)" in card


@pytest.mark.slow
def test_a_best_checkpoint_from_before_a_resume_is_what_the_results_describe(tmp_path):
    """The resumed run never evaluated the best checkpoint itself (it was written before the interruption): its
    predictions are made again, without a row in the history, so eval_predictions.json is still the saved model's."""

    class StopAsStepNineBegins(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 8:
                raise KeyboardInterrupt

    argv = [*QUICK, *BEST, "--method", "lora", "--output_dir", str(tmp_path / "run")]
    with pytest.raises(KeyboardInterrupt):
        run_experiment(argv, callbacks=[StopAsStepNineBegins()])
    assert sorted(path.name for path in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    results = run_experiment([*argv, "--resume_from_checkpoint", "last"])
    assert results["saved_model"]["checkpoint"] == "checkpoint-4" and len(results["history"]) == 3
    again = evaluate_run(tmp_path / "run", output_dir=tmp_path / "evaluated")
    assert {key: again[key] for key in EVAL_KEYS} == {key: results["final_metrics"][key] for key in EVAL_KEYS}
    assert again["eval_loss"] == pytest.approx(results["final_metrics"]["eval_loss"], rel=1e-6)
    assert predictions(tmp_path / "run")["predictions"] == predictions(tmp_path / "evaluated")["predictions"]


def test_load_best_model_at_end_is_refused_where_a_checkpoint_cannot_be_loaded_back(tmp_path, capsys):
    """peft saves a projected prefix as the prefix it computed, not its MLP: refused before training, not after."""
    assert_refused([*QUICK, *BEST, "--method", "prefix_tuning", "--implementation", "library", "--prefix_projection",
                    "true", "--output_dir", tmp_path / "run"],
                   r"--load_best_model_at_end cannot be used with this cell: peft saves a prefix-tuning adapter .*"
                   r"--implementation scratch", capsys, absent=tmp_path / "run")


# ------------------------------------------------------------------------------------- a user's own metrics
@pytest.mark.slow
@pytest.mark.parametrize("cell_spec", [LORA, cell("prefix_tuning", "library")])  # one pass; Seq2SeqTrainer's two
def test_a_users_metrics_are_added_to_accuracy_loss_and_the_rest(cell_spec, tmp_path):
    received = []
    method, implementation = cell_spec

    def generated_length(eval_prediction):
        generated, labels = eval_prediction  # unpacks as Trainer's EvalPrediction
        received.append(eval_prediction)
        return {"generated_tokens": float(generated.shape[1]),
                "positive_share": float((eval_prediction.predicted_class_ids == 1).mean())}

    results = run_experiment([*QUICK, "--method", method, "--implementation", implementation,
                              "--generation_num_beams", "2", "--generation_max_length", "5",
                              "--load_best_model_at_end", "true", "--metric_for_best_model", "positive_share",
                              "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps",
                              "--save_steps", "2", "--output_dir", str(tmp_path / "run")],
                             compute_metrics=generated_length)
    final = results["final_metrics"]
    assert {"eval_loss", *EVAL_KEYS, "eval_generated_tokens", "eval_positive_share"} <= set(final)
    assert len(received) == 2 and final["eval_num_scored"] == 16
    last = received[-1]
    assert last.predictions.shape == (16, 5)  # --generation_max_length 5: the start token and up to 4 more
    assert last.label_ids.shape == (16, 2)  # a label word and </s>
    assert len(last.texts) == 16 and all(isinstance(text, str) for text in last.texts)
    assert last.label_words == ["negative", "positive"] and len(last.reference_class_ids) == 16
    saved = results["saved_model"]
    assert saved["chosen_by"] == "the best eval_positive_share (higher is better)"
    chosen = received[saved["step"] // 2 - 1]  # evaluations at steps 2 and 4
    assert list(chosen.predicted_class_ids) == predictions(tmp_path / "run")["predictions"]
    assert final["eval_positive_share"] == max(metrics.predicted_class_ids.tolist().count(1) / 16
                                               for metrics in received)


@pytest.mark.slow
def test_a_users_metric_may_not_replace_one_of_the_trainers(tmp_path):
    with pytest.raises(UsageError, match=r"compute_metrics returned accuracy, which GenerationAccuracyTrainer"):
        run_experiment([*QUICK, "--method", "lora", "--output_dir", str(tmp_path / "run")],
                       compute_metrics=lambda eval_prediction: {"accuracy": 1.0})
    assert not (tmp_path / "run").exists()  # the failed run took back what it wrote


@pytest.mark.slow
def test_the_trainer_piece_keeps_eval_loss_beside_a_users_metrics(tmp_path, tiny_tokenizer):
    """With --load_best_model_at_end's default metric (eval_loss), which a user's compute_metrics used to drop."""
    from transformers import DataCollatorForSeq2Seq

    from hf_peft_suite import GenerationAccuracyTrainer, build_model, load_data

    model, tokenizer = build_model("builtin:tiny-t5", method="lora")
    data = load_data(dataset_name="builtin:tiny-sentiment", tokenizer=tokenizer, max_source_length=64,
                     max_train_samples=16, max_eval_samples=8)
    trainer = GenerationAccuracyTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path / "pieces"), learning_rate=1e-2, max_steps=4,
                               per_device_train_batch_size=8, eval_strategy="steps", eval_steps=2,
                               save_strategy="steps", save_steps=2, load_best_model_at_end=True, use_cpu=True,
                               disable_tqdm=True, report_to="none"),
        train_dataset=data.train_dataset, eval_dataset=data.eval_dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100), processing_class=tokenizer,
        label_words=data.label_words, compute_metrics=lambda eval_prediction: {"texts": len(eval_prediction.texts)},
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint is not None
    metrics = trainer.evaluate()
    assert metrics["eval_texts"] == 8 and "eval_loss" in metrics and "eval_accuracy" in metrics


# ------------------------------------------------------------------------------------------ refused flags
# Found once the model is built (a package a cell's model does not change: asked of a scratch and a library cell).
REFUSED_AT_BUILD = [
    (["--report_to", "tensorboard"], r"--report_to tensorboard cannot be used here: .*pip install tensorboard"),
    (["--report_to", "wandb"], r"--report_to wandb cannot be used here: .*pip install wandb"),
    (["--optim", "adamw_bnb_8bit"], r"--optim adamw_bnb_8bit cannot be used here: .*bitsandbytes.*pip install"),
    (["--optim", "galore_adamw_layerwise", "--optim_target_modules", "q"],
     r"--optim galore_adamw_layerwise cannot be used here: .*galore_torch.*pip install"),
    (["--use_liger_kernel", "true"], r"--use_liger_kernel needs the liger-kernel package.*pip install liger-kernel"),
    (["--torch_compile_backend", "tensorrt"], r"--torch_compile_backend tensorrt needs the torch_tensorrt package, "
                                              r"which is not installed: pip install torch-tensorrt"),
    (["--torch_compile_backend", "nosuch"], r"--torch_compile_backend nosuch is not a backend accelerate knows; "
                                            r"choose one of .*inductor"),
    (["--debug", "tpu_metrics_debug"], r"--debug tpu_metrics_debug prints TPU metrics and needs torch_xla.*"
                                       r"pip install torch_xla"),
    (["--metric_for_best_model", "f1"], r"--metric_for_best_model f1 is not a metric evaluation computes; choose "
                                        r"one of accuracy, macro_f1"),
]
# Found as the arguments are read (the cell does not matter).
REFUSED_AS_READ = [
    (["--prediction_loss_only", "true"], r"--prediction_loss_only would skip generation"),
    (["--batch_eval_metrics", "true"], r"--batch_eval_metrics is not supported"),
    (["--eval_do_concat_batches", "false"], r"--eval_do_concat_batches false is not supported"),
    (["--label_names", "targets"], r"--label_names targets: the prepared data holds its targets as 'labels'"),
    (["--half_precision_backend", "apex"],  # transformers 5 has no apex backend
     r"unrecognized arguments: --half_precision_backend apex" if LATEST
     else r"--half_precision_backend apex is NVIDIA apex's float16 training"),
    (["--ddp_backend", "hccl"], r"--ddp_backend hccl needs the torch_npu package, which is not installed: "
                                r"pip install torch_npu"),
    (["--fp16_full_eval", "true"], r"--fp16_full_eval is refused: T5 overflows in float16.*--bf16_full_eval"),
    (["--num_beams", "2"], r"unrecognized arguments: --num_beams 2; did you mean --generation_num_beams\?"),
    (["--evaluation_strategy", "epoch"], r"did you mean --eval_strategy\?"),
    (["--compute_metrics", "f1"], r"compute_metrics is a Python function: pass it to run_experiment\(compute_metrics"),
]


@pytest.mark.parametrize(("method", "flags", "message"), [
    *[pytest.param(method, flags, message, id=f"{method.split()[0]}-{flags[0].lstrip('-')}-{flags[1]}")
      for method in ("lora", "ia3 --implementation library") for flags, message in REFUSED_AT_BUILD],
    *[pytest.param("lora", flags, message, id=flags[0].lstrip("-")) for flags, message in REFUSED_AS_READ],
])
def test_flags_that_cannot_work_are_one_error_line_before_anything_is_written(method, flags, message, tmp_path,
                                                                            capsys):
    output_dir = tmp_path / "run"
    assert_refused([*QUICK, "--method", *method.split(), *flags, "--output_dir", output_dir], message, capsys,
                   absent=output_dir)


def test_a_json_config_key_with_another_tools_name_gets_the_same_meanings_hint(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"preset": "tiny", "num_beams": 4}))
    assert_refused([config], r"unknown key 'num_beams'; did you mean 'generation_num_beams'\?", capsys, tmp_path)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # half-built callbacks' __del__
def test_every_report_to_integration_without_its_package_is_one_error_line():
    """Whatever Trainer cannot build here is refused in one line that says what to install, and only that."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    refused = 0
    for name, callback in INTEGRATION_TO_CALLBACK.items():
        try:
            callback()
            buildable = True
        except Exception:  # noqa: BLE001 (whatever Trainer's own attempt raises)
            buildable = False
        if buildable:
            check_report_to([name])
            continue
        refused += 1
        with pytest.raises(UsageError) as error:
            check_report_to([name])
        assert str(error.value).startswith(f"--report_to {name} cannot be used here: ")
        assert "pip install" in str(error.value) or name == "kubeflow", str(error.value)  # kubeflow: an environment
    assert refused >= 10  # none of the trackers is installed here
    with pytest.raises(UsageError, match=r"--report_to nosuchtracker: nosuchtracker is not supported"):
        check_report_to(["nosuchtracker"])
    check_report_to("none"), check_report_to(["none"])


def test_every_optimizer_trainer_cannot_build_here_is_one_error_line():
    """For every --optim value: refused exactly when Trainer cannot build it here, in one line naming what to
    install."""
    from transformers import Trainer
    from transformers.training_args import OptimizerNames

    model = torch.nn.Linear(2, 2)
    refused = 0
    for name in OptimizerNames:
        args = TrainingArguments(output_dir="unused", optim=name.value, use_cpu=True)
        try:
            Trainer.get_optimizer_cls_and_kwargs(args, model)
            buildable = True
        except Exception:  # noqa: BLE001 (whatever Trainer's own attempt raises)
            buildable = False
        if buildable:
            check_optimizer(args, model)
            continue
        refused += 1
        with pytest.raises(UsageError) as error:
            check_optimizer(args, model)
        assert str(error.value).startswith(f"--optim {name.value} cannot be used here: ")
        assert "pip install" in str(error.value), str(error.value)
    assert refused >= 20  # bitsandbytes, torchao, GaLore, APOLLO, LOMO, schedulefree, ... are not installed here
