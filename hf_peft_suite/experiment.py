"""One experiment, in named stages: prepare -> build -> train -> collect results -> publish.

- :func:`prepare` checks the arguments, the method's availability, the output folder, the checkpoint to resume and the
  push settings, and writes nothing;
- :func:`build` loads the tokenizer, the data and the base model and applies the method (which checks its options);
- :func:`train` writes the random base beside the delta where one is needed, trains and evaluates;
- :func:`collect_results` gathers ``results.json``'s record; :func:`publish` writes it with the predictions and the
  model card, prints the summary and pushes to the Hub when asked.

``run_experiment(method="lora", preset="tiny", output_dir="out")`` is the Python form of
``python run_experiment.py --method lora --preset tiny --output_dir out``; both return/write the same results.

What ``output_dir`` holds afterwards:

- ``results.json``: the full configuration, the task (``input_template``, ``label_map``), per-epoch train loss and
  eval metrics (epoch 0 first with ``--eval_on_start``: the model before training, also in ``before_training``), best
  accuracy and its epoch (over the evaluations after training began), which evaluation the saved model is
  (``saved_model``) and its metrics (``final_metrics``), every dict Trainer logged (``log_history``: per-step losses,
  learning rates, counters), parameter counts, runtimes and throughput, peak memory, artifact size, the processes,
  global batch and engine that trained it (:mod:`hf_peft_suite.launch`), library versions;
- ``model/``: the trained artifact (the whole model for full fine-tuning; only the delta and its config for PEFT
  methods), the tokenizer and a model card (``README.md``): the last evaluation's model, or with
  ``--load_best_model_at_end`` the best checkpoint's;
- ``eval_predictions.json``: the class id the saved model generated for each evaluation example (-1: no label
  word) and its reference, in the order of the evaluation set: every example once, however many processes ran;
- ``base_model/``: the frozen base, only when it cannot be loaded by name (the built-in tiny model, ``--random_init``),
  so that ``model/`` stays loadable;
- ``checkpoint-*/``: Trainer checkpoints, if ``--save_strategy`` asks for them (only the trainable weights, the
  optimizer and scheduler state; see docs/checkpoints.md).

Nothing is written before every argument, the data, the model and the method's options have been checked, so a
mistake never leaves a half-written ``output_dir`` behind (nor touches a previous run in it). A run that fails or is
stopped before its first checkpoint removes what it wrote (``base_model/``, and the folder it made), so the corrected
run can start there again.
"""

from __future__ import annotations

import platform
import resource
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from .arguments import ParsedArguments, parse_arguments, recipe_train_batch
from .compat import start_command
from .data import PreparedData, load_data
from .errors import UsageError
from .files import ARTIFACT_FOLDER, BASE_FOLDER, MODEL_WEIGHTS_NAME, PREDICTIONS_NAME, RESULTS_NAME
from .hub import PushSettings, push_run, push_settings, pushed_files, write_model_card
from .launch import Engine, check_engine, engine_of, global_train_batch, warn_if_batch_differs
from .methods import Method, get_method
from .metrics import LabelScorer
from .modeling import count_parameters, load_base_model, load_tokenizer
from .plots import write_run_figure
from .progress import attach_console, run_label
from .quiet import library_output
from .report import before_training, trained_history
from .run_folder import (FolderClaim, checkpoints_in, prepare_output_dir, remove_previous_run, write_predictions,
                         write_results)
from .tiny import TINY_MODEL_NAME
from .trainer import TRAINING_ARGS_NAME, GenerationAccuracyTrainer, UserMetrics
from .training_flags import check_training_flags
from .version import __version__
from .weights import load_tensors


def run_experiment(argv: list[str] | None = None, callbacks: list | None = None,
                   compute_metrics: UserMetrics | None = None, **kwargs) -> dict:
    """Run one experiment and return its results (also written to ``output_dir/results.json``).

    Takes the CLI's arguments as keywords (``method="lora", lora_r=16, max_steps=5, preset="tiny"``), or a list of
    command-line strings as ``argv`` (both: the keywords win). ``callbacks`` are ``transformers.TrainerCallback``s
    added to the Trainer. ``compute_metrics`` adds a user's metrics to every evaluation (it receives a
    :class:`~hf_peft_suite.metrics.GeneratedLabels`; see :class:`~hf_peft_suite.trainer.GenerationAccuracyTrainer`).
    """
    return run_parsed_experiment(parse_arguments(list(argv or []), **kwargs), callbacks=callbacks,
                                 compute_metrics=compute_metrics)


def run_parsed_experiment(args: ParsedArguments, callbacks: list | None = None,
                          compute_metrics: UserMetrics | None = None) -> dict:
    """Run one experiment from already parsed arguments (see :func:`run_experiment` and the module docstring).

    The libraries are quiet while it runs (:mod:`hf_peft_suite.quiet`; ``verbose=True`` brings their logs back)."""
    with library_output(args.experiment.verbose):
        return _run_stages(args, callbacks, compute_metrics)


def _run_stages(args: ParsedArguments, callbacks: list | None, compute_metrics: UserMetrics | None) -> dict:
    plan = prepare(args)
    built = build(plan, user_metrics=compute_metrics is not None)
    warn_if_batch_differs(plan.args.training, *recipe_train_batch(plan.args))  # (a refused run says only why)
    made_folder = plan.args.training.process_index == 0 and not plan.output_dir.exists()
    claim = claim_output_dir(plan)  # the first write: everything above only read and checked
    try:
        trainer = make_trainer(plan, built, callbacks, compute_metrics)
        try:
            train_output, history = train(plan, trainer)
        except BaseException:
            discard_unfinished_run(plan)
            raise
        artifact_size = save_trained_model(plan, trainer)
        results = collect_results(plan, built, trainer, train_output, history, artifact_size)
        if trainer.is_world_process_zero():
            publish(plan, trainer, results)
    finally:
        claim.release()
        if made_folder and plan.output_dir.is_dir() and not any(plan.output_dir.iterdir()):
            plan.output_dir.rmdir()  # a failed run that took back what it wrote leaves no folder either
    return results


# ---------------------------------------------------------------------------------------------------- prepare
@dataclass
class Plan:
    """A checked run: its arguments, method, output folder and push settings. Nothing is loaded or written yet."""

    args: ParsedArguments
    method: Method
    output_dir: Path
    push: PushSettings | None
    learning_rate_source: str
    started: datetime
    engine: Engine

    @property
    def random_base(self) -> bool:
        """Whether the base has random weights (``--random_init`` or the built-in tiny model)."""
        return self.args.model.random_init or self.args.model.model_name_or_path == TINY_MODEL_NAME

    @property
    def keeps_base(self) -> bool:
        """A delta must name a base it can be loaded onto: a random base is saved beside it, in ``base_model/``."""
        return self.args.experiment.method != "full" and self.random_base


def prepare(args: ParsedArguments) -> Plan:
    """Check what can be checked before loading anything: the method, the output folder, the push settings."""
    experiment, training = args.experiment, args.training
    start_command()  # a library outside the tested versions: one warning; a changed internal: one error line
    if experiment.seeds is not None:
        raise UsageError("--seeds repeats every cell of --method all over several seeds; for one run give --seed N")
    method = get_method(experiment.method)
    method.builder(experiment.implementation)  # refuse a missing library before loading anything
    if training.gradient_checkpointing and not method.supports_gradient_checkpointing:
        raise UsageError(
            f"--method {method.name} does not work with --gradient_checkpointing (it trains through the decoder's "
            f"key/value cache, which recomputed layers would extend twice); train without it"
        )
    origin = args.origins.get("learning_rate", "method default")
    output_dir = prepare_output_dir(training, experiment.method, experiment.implementation)
    engine = engine_of(training)
    check_engine(engine, training, f"--method {method.name} --implementation {experiment.implementation}",
                 method.artifact_format(experiment.implementation).saves_from_given_state_dict,
                 delta=method.name != "full")
    push = push_settings(training, output_dir)
    # Our own push after training (hub.py): Trainer's would push every checkpoint, tokenizer and training arguments.
    training.push_to_hub = False
    return Plan(
        args=args,
        method=method,
        output_dir=output_dir,
        push=push,
        learning_rate_source=method.learning_rate_source
        if origin in ("method default", "recommended settings") else "given",
        started=datetime.now(timezone.utc),
        engine=engine,
    )


# ------------------------------------------------------------------------------------------------------ build
@dataclass
class Built:
    """The loaded pieces of a run: tokenizer, tokenized data, the model to train and its parameter counts."""

    tokenizer: object
    data: PreparedData
    model: torch.nn.Module
    parameters: dict[str, float]


def build(plan: Plan, user_metrics: bool = False) -> Built:
    """Load the tokenizer, the data and the base, and apply the method (which checks its options); check that they
    fit together, that the training flags' packages are installed (:mod:`hf_peft_suite.training_flags`), and, when
    resuming or loading the best model at the end, that the model's checkpoints can be loaded back. Nothing is
    written."""
    from transformers import set_seed

    args, training = plan.args, plan.args.training
    if args.experiment.num_threads:
        torch.set_num_threads(args.experiment.num_threads)
    reset_peak_memory()
    set_seed(training.seed)
    tokenizer = load_tokenizer(args.model.model_name_or_path, args.model.tokenizer_name_or_path)
    data_seed = training.data_seed if training.data_seed is not None else training.seed
    with training.main_process_first(desc="loading the data"):  # downloaded and tokenized once, then read from cache
        data = load_data(args.data, tokenizer, seed=data_seed)
    check_generation_length(training, tokenizer, data.label_words)
    base = load_base_model(args.model.model_name_or_path, random_init=args.model.random_init, seed=training.seed)
    check_tokenizer_fits_model(tokenizer, base)
    if plan.keeps_base:  # the delta names the base saved beside it
        check_same_base_as_resumed_run(plan, base)
        base.name_or_path = base.config.name_or_path = BASE_FOLDER
    model = plan.method.builder(args.experiment.implementation)(base, args.options, tokenizer)
    check_training_flags(training, model, user_metrics)
    check_checkpoints_reload(plan, model)
    if training.resume_from_checkpoint:
        check_resume_checkpoint(plan, model)
    return Built(tokenizer=tokenizer, data=data, model=model, parameters=count_parameters(model))


def check_generation_length(training, tokenizer, label_words: list[str]) -> None:
    """``--generation_max_length`` (total length, the decoder's start token included) must fit every label word."""
    longest = LabelScorer(tokenizer, label_words).max_new_tokens
    if training.generation_max_length is not None and training.generation_max_length < longest + 1:
        raise UsageError(
            f"--generation_max_length {training.generation_max_length} is too short for the label words (the longest "
            f"needs {longest} tokens after the start token, so at least {longest + 1}): every answer would be cut "
            f"and scored invalid; leave it out (generation then writes exactly what the longest label word needs)"
        )


def check_tokenizer_fits_model(tokenizer, base) -> None:
    """Every token id the tokenizer can produce must have a row in the model's embedding."""
    rows = base.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UsageError(
            f"the tokenizer has {len(tokenizer):,} tokens but the model's embedding has {rows:,} rows, so some token "
            f"ids have no embedding; use the model's own tokenizer (leave out --tokenizer_name_or_path) or a model "
            f"built for this tokenizer"
        )


def check_same_base_as_resumed_run(plan: Plan, base) -> None:
    """A resumed run's saved random base must be the one this run builds (the same seed), or model/ + base_model/
    would not be the model that was evaluated."""
    base_dir = plan.output_dir / BASE_FOLDER
    weights = base_dir / MODEL_WEIGHTS_NAME
    if not plan.args.training.resume_from_checkpoint or not weights.is_file():
        return
    saved, current = load_tensors(str(weights)), base.state_dict()
    if any(name in current and not torch.equal(tensor, current[name]) for name, tensor in saved.items()):
        raise UsageError(
            f"{base_dir} holds the random base the resumed run was built with, and this run builds another (a "
            f"different --seed or model); resume with the arguments of the run that wrote it"
        )


def check_checkpoints_reload(plan: Plan, model) -> None:
    """Resuming and ``--load_best_model_at_end`` load a checkpoint back into the model: refuse, before training, a
    cell whose checkpoints cannot be (peft's projected prefix)."""
    training = plan.args.training
    if not (training.load_best_model_at_end or training.resume_from_checkpoint):
        return
    problem = plan.method.artifact_format(plan.args.experiment.implementation).reload_problem(model)
    if problem:
        flag = "--load_best_model_at_end" if training.load_best_model_at_end else "--resume_from_checkpoint"
        raise UsageError(f"{flag} cannot be used with this cell: {problem}")


def check_resume_checkpoint(plan: Plan, model) -> None:
    checkpoint = plan.args.training.resume_from_checkpoint
    try:
        plan.method.artifact_format(plan.args.experiment.implementation).check(model, checkpoint)
    except UsageError as error:
        raise UsageError(f"cannot resume from {checkpoint}: {error}") from None


def claim_output_dir(plan: Plan) -> FolderClaim:
    """Take the output folder for this run (process 0; the others wait for the outcome), refusing a folder another
    run has claimed or written into since :func:`prepare` looked; replace a previous run when asked to."""
    claim, problem = FolderClaim(plan.output_dir), None
    training = plan.args.training
    if training.process_index == 0:
        try:
            claim.acquire()
            prepare_output_dir(training, plan.args.experiment.method, plan.args.experiment.implementation)
            if training.overwrite_output_dir and not training.resume_from_checkpoint:
                remove_previous_run(plan.output_dir)
        except UsageError as error:
            claim.release()
            problem = str(error)
    problem = _from_process_zero(problem)
    if problem:
        raise UsageError(problem)
    return claim


def _from_process_zero(value):
    """``value`` as process 0 has it, on every process (itself when there is one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    shared = [value]
    torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]


def make_trainer(plan: Plan, built: Built, callbacks: list | None = None,
                 compute_metrics: UserMetrics | None = None) -> GenerationAccuracyTrainer:
    from transformers import DataCollatorForSeq2Seq

    trainer = GenerationAccuracyTrainer(
        model=built.model,
        args=plan.args.training,
        train_dataset=built.data.train_dataset,
        eval_dataset=built.data.eval_dataset,
        data_collator=DataCollatorForSeq2Seq(built.tokenizer, label_pad_token_id=-100),
        processing_class=built.tokenizer,
        label_words=built.data.label_words,
        artifact_format=plan.method.artifact_format(plan.args.experiment.implementation),
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    args = plan.args
    title = f"{run_label(args)} on {args.model.model_name_or_path}" + (" (random init)" if plan.random_base else "")
    attach_console(trainer, title, run_label(args), args.experiment.verbose, "disable_tqdm" in args.origins)
    return trainer


# ------------------------------------------------------------------------------------------------------ train
def train(plan: Plan, trainer: GenerationAccuracyTrainer):
    """Write the random base where the delta needs it, train, and evaluate the final weights once more if training
    did not (``--eval_strategy no``, or evaluation by steps that does not fall on the last one), so the results
    always describe the model that is saved. With ``--load_best_model_at_end`` the saved model is the best
    checkpoint's, which was evaluated when it was written.

    Returns Trainer's ``TrainOutput`` and the per-evaluation history (:func:`epoch_history`).
    """
    save_random_base(plan)
    train_output = trainer.train(resume_from_checkpoint=plan.args.training.resume_from_checkpoint)
    history = epoch_history(trainer.state.log_history)
    best_loaded = plan.args.training.load_best_model_at_end and trainer.state.best_model_checkpoint
    if not trained_history(history) or (not best_loaded and history[-1]["step"] != trainer.state.global_step):
        trainer.evaluate()
        history = epoch_history(trainer.state.log_history)
    return train_output, history


def discard_unfinished_run(plan: Plan) -> None:
    """Training failed or was stopped (process 0): without a checkpoint there is nothing to resume, so remove the
    random base this run wrote, and the corrected run can start in the same folder."""
    if plan.args.training.process_index != 0 or plan.args.training.resume_from_checkpoint:
        return
    if not checkpoints_in(plan.output_dir):
        shutil.rmtree(plan.output_dir / BASE_FOLDER, ignore_errors=True)


def save_random_base(plan: Plan) -> None:
    """Save the random base beside the delta (process 0, once per run folder).

    The method has changed the loaded base in place (wrapped layers, hooks), so the same random weights are rebuilt
    from the seed and saved as a plain model.
    """
    base_dir = plan.output_dir / BASE_FOLDER
    training, model_args = plan.args.training, plan.args.model
    if not plan.keeps_base or training.process_index != 0 or (training.resume_from_checkpoint and base_dir.is_dir()):
        return
    base = load_base_model(model_args.model_name_or_path, random_init=model_args.random_init, seed=training.seed)
    base.save_pretrained(base_dir)


def save_trained_model(plan: Plan, trainer: GenerationAccuracyTrainer) -> int | None:
    """Write ``model/`` in the cell's format (every process takes part: FSDP and DeepSpeed gather the weights; process 0
    writes them, with the tokenizer). Returns the size of what a push would upload (on process 0)."""
    artifact_dir = plan.output_dir / ARTIFACT_FOLDER
    trainer.save_model(str(artifact_dir))
    if not trainer.is_world_process_zero():
        return None
    (artifact_dir / TRAINING_ARGS_NAME).unlink(missing_ok=True)  # a pickle; checkpoints keep Trainer's copy
    return sum((artifact_dir / name).stat().st_size for name in pushed_files(artifact_dir))



# ------------------------------------------------------------------------------------------- collect, publish
def collect_results(plan: Plan, built: Built, trainer, train_output, history: list[dict], artifact_size) -> dict:
    """The record written to ``results.json`` (its keys are documented in README.md and docs/api.md)."""
    args, data = plan.args, built.data
    trained, start = trained_history(history), before_training(history)
    best = max(trained, key=lambda row: row["eval_accuracy"])
    saved, final = saved_model(trainer, history)
    peak_memory_mb, memory_kind = peak_memory()
    return {
        "method": args.experiment.method,
        "implementation": args.experiment.implementation,
        "model_name_or_path": args.model.model_name_or_path,
        "dataset_name": args.data.dataset_name,
        "random_init": plan.random_base,
        "label_words": data.label_words,
        "input_template": data.input_template,
        "label_map": data.label_map,
        "max_new_tokens": trainer.max_new_tokens,
        "num_train_examples": len(data.train_dataset),
        "num_eval_examples": len(data.eval_dataset),
        "world_size": args.training.world_size,
        "global_train_batch_size": global_train_batch(args.training),
        "engine": plan.engine.name,
        "learning_rate": args.training.learning_rate,
        "learning_rate_source": plan.learning_rate_source,
        "history": history,
        "best_accuracy": best["eval_accuracy"],
        "best_epoch": best["epoch"],
        "before_training": eval_metrics(start) if start else None,
        "saved_model": saved,
        "final_metrics": final,
        "parameters": built.parameters,
        "train_runtime_s": train_output.metrics.get("train_runtime"),
        "train_samples_per_second": train_output.metrics.get("train_samples_per_second"),
        "train_loss": train_output.metrics.get("train_loss"),
        "eval_runtime_s": final.get("eval_runtime"),
        "eval_samples_per_second": final.get("eval_samples_per_second"),
        "peak_memory_mb": peak_memory_mb,
        "peak_memory_kind": memory_kind,
        "artifact_dir": str(plan.output_dir / ARTIFACT_FOLDER),
        "artifact_size_bytes": artifact_size,
        "versions": library_versions(),
        "started_at": plan.started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": args.to_dict(),
        "log_history": trainer.state.log_history,
    }


def saved_model(trainer: GenerationAccuracyTrainer, history: list[dict]) -> tuple[dict, dict]:
    """Which evaluation ``model/`` is (``epoch``, ``step``, ``checkpoint``, ``chosen_by``) and its eval metrics.

    With ``--load_best_model_at_end``, the best checkpoint Trainer loaded (its metrics are those of the evaluation at
    its step); otherwise the last evaluation, which :func:`train` made sure is of the final weights. A best
    checkpoint evaluated before a resume, whose predictions this process never saw, is evaluated again (nothing is
    logged), so that ``eval_predictions.json`` is its own too.
    """
    args, state = trainer.args, trainer.state
    checkpoint = state.best_model_checkpoint if args.load_best_model_at_end else None
    row, chosen_by = history[-1], "the last evaluation"
    if checkpoint:
        step = int(Path(checkpoint).name.rsplit("-", 1)[-1])
        row = next(row for row in reversed(history) if row["step"] == step)
        metric = args.metric_for_best_model if args.metric_for_best_model.startswith("eval_") \
            else f"eval_{args.metric_for_best_model}"
        chosen_by = f"the best {metric} ({'higher' if args.greater_is_better else 'lower'} is better)"
    final = eval_metrics(row)
    if row["step"] not in trainer.eval_class_ids:
        output = trainer.predict(trainer.eval_dataset, metric_key_prefix="eval")
        final = eval_metrics(output.metrics)
        trainer.eval_class_ids[row["step"]] = trainer.last_eval_class_ids
    saved = {"epoch": row["epoch"], "step": row["step"], "checkpoint": Path(checkpoint).name if checkpoint else None,
             "chosen_by": chosen_by}
    return saved, final


def publish(plan: Plan, trainer: GenerationAccuracyTrainer, results: dict) -> None:
    """Write the predictions, the model card and ``results.json``, print the summary, and push when asked."""
    output_dir = plan.output_dir
    write_predictions(output_dir / PREDICTIONS_NAME, results["label_words"],
                      trainer.eval_class_ids[results["saved_model"]["step"]])
    write_model_card(output_dir / ARTIFACT_FOLDER, results, plan.push.repo_id if plan.push else None)
    write_results(output_dir, results)
    print_summary(results)
    if plan.args.experiment.figures:
        print(write_run_figure(results, output_dir))
    if plan.push is not None:
        results["hub"] = push_run(output_dir, plan.push)
        write_results(output_dir, results)
        print(f"pushed {', '.join(results['hub']['files'])} to {results['hub']['url']}")


# ------------------------------------------------------------------------------------------------ measurements
def reset_peak_memory() -> None:
    """Start a new peak-memory measurement, so cells run one after another in one process are measured apart."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:  # Linux: writing 5 to clear_refs resets the process's peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory() -> tuple[float, str]:
    """Peak memory in MiB since :func:`reset_peak_memory`: CUDA allocations on GPU, resident set size on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_memory_allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "cpu_peak_rss"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss_process"


def library_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions = {"python": platform.python_version(), "hf_peft_suite": __version__}
    for package in ("torch", "transformers", "datasets", "peft", "accelerate", "evaluate", "adapters", "safetensors"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def eval_metrics(metrics: dict) -> dict:
    """The evaluation entries (``eval_*``) of a log row or a metrics dict, in their order."""
    return {key: value for key, value in metrics.items() if key.startswith("eval_")}


def epoch_history(log_history: list[dict]) -> list[dict]:
    """One row per evaluation: epoch, the last logged training loss before it, and the eval metrics."""
    rows, last_loss = [], None
    for entry in log_history:
        if "loss" in entry:
            last_loss = entry["loss"]
        if "eval_accuracy" in entry:
            row = {"epoch": round(entry.get("epoch", 0.0), 4), "step": entry.get("step"), "train_loss": last_loss}
            row.update(eval_metrics(entry))
            rows.append(row)
    return rows


def print_summary(results: dict, stream=None) -> None:
    """The line that ends a run: its best accuracy and parameter counts (the per-epoch table was printed as it went,
    by :class:`~hf_peft_suite.progress.ConsoleProgress`)."""
    stream = stream or sys.stdout
    parameters = results["parameters"]
    start = results.get("before_training")
    before = f" ({start['eval_accuracy']:.4f} before training)" if start else ""
    saved = results.get("saved_model") or {}
    chosen = f" | model/: {saved['checkpoint']}, epoch {saved['epoch']:g}, {saved['chosen_by']}" \
        if saved.get("checkpoint") else ""
    print(
        f"best valid_acc {results['best_accuracy']:.4f} at epoch {results['best_epoch']:g}{before}{chosen} | "
        f"parameters: total {parameters['total']:,}, trainable {parameters['trainable']:,} "
        f"({parameters['trainable_percent']:.4f}%) | results: {Path(results['artifact_dir']).parent / RESULTS_NAME}",
        file=stream,
    )
