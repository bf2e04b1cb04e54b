"""One experiment: data -> model -> GenerationAccuracyTrainer -> train and evaluate -> save -> results.json.

``run_experiment(method="lora", preset="tiny", output_dir="out")`` is the Python form of
``python run_experiment.py --method lora --preset tiny --output_dir out``; both return/write the same results.

What ``output_dir`` holds afterwards:

- ``results.json``: the full configuration, per-epoch train loss and eval metrics, best accuracy and its epoch,
  parameter counts, runtimes and throughput, peak memory, artifact size, library versions;
- ``model/``: the trained artifact (the whole model for full fine-tuning; only the delta and its config for PEFT
  methods), the tokenizer and a model card (``README.md``);
- ``eval_predictions.json``: the class id generated for each evaluation example in the last evaluation (-1: no label
  word) and its reference, in the order of the evaluation set: every example once, however many processes ran;
- ``base_model/``: the frozen base, only when it cannot be loaded by name (the built-in tiny model, ``--random_init``),
  so that ``model/`` stays loadable;
- ``checkpoint-*/``: Trainer checkpoints, if ``--save_strategy`` asks for them (only the trainable weights, the
  optimizer and scheduler state; see docs/checkpoints.md).

Nothing is written before every argument, the data, the model and the method's options have been checked, so a
mistake never leaves a half-written ``output_dir`` behind (nor touches a previous run in it).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from .arguments import ParsedArguments, parse_arguments
from .data import load_data
from .errors import UsageError
from .methods import get_method
from .hub import push_run, push_settings, pushed_files, write_model_card
from .modeling import count_parameters, load_base_model, load_tokenizer, save_artifact
from .tiny import TINY_MODEL_NAME
from .trainer import TRAINING_ARGS_NAME, GenerationAccuracyTrainer
from .version import __version__

RESULTS_NAME = "results.json"
ARTIFACT_FOLDER = "model"
BASE_FOLDER = "base_model"
PREDICTIONS_NAME = "eval_predictions.json"
TRAINER_STATE_NAME = "trainer_state.json"
LAST_CHECKPOINT = ("last", "true")


def run_experiment(argv: list[str] | None = None, callbacks: list | None = None, **kwargs) -> dict:
    """Run one experiment and return its results (also written to ``output_dir/results.json``).

    Takes the CLI's arguments as keywords (``method="lora", lora_r=16, max_steps=5, preset="tiny"``), or a list of
    command-line strings as ``argv``. ``callbacks`` are ``transformers.TrainerCallback``s added to the Trainer.
    """
    return run_parsed_experiment(parse_arguments(list(argv or []), **kwargs), callbacks=callbacks)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_launch(training) -> None:
    """Refuse processes that a launcher started together but that would not train together.

    ``torchrun``/``accelerate launch`` set ``WORLD_SIZE``; if the training arguments see fewer processes (on a
    machine without GPUs and without ``--use_cpu``, or an FSDP/DeepSpeed config on CPUs), each process would train
    alone and all of them would write the same ``output_dir``.
    """
    launched = _world_size()
    if launched > 1 and training.world_size != launched:
        raise UsageError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but each trains alone (world size "
            f"{training.world_size}), so they would overwrite each other's results; on CPUs pass --use_cpu true "
            f"(accelerate: --multi_gpu with use_cpu, not FSDP or DeepSpeed), on GPUs give each process one GPU"
        )


def _prepare_output_dir(args: ParsedArguments) -> Path:
    training = args.training
    check_launch(training)
    if training.output_dir in (None, "", "trainer_output"):
        if _world_size() > 1:
            raise UsageError("give --output_dir when launching several processes, so that all of them write one run")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        training.output_dir = os.path.join("outputs", f"{args.experiment.method}-{args.experiment.implementation}-{stamp}")
    output_dir = Path(training.output_dir)
    if output_dir.is_file():
        raise UsageError(f"--output_dir {output_dir} is a file; give a folder")
    previous = output_dir.is_dir() and any(output_dir.iterdir())
    if previous and not training.overwrite_output_dir and not training.resume_from_checkpoint:
        raise UsageError(
            f"--output_dir {output_dir} already holds a previous run; choose a new --output_dir, resume it with "
            f"--resume_from_checkpoint, or pass --overwrite_output_dir to replace it"
        )
    if training.resume_from_checkpoint:
        training.resume_from_checkpoint = str(resolve_checkpoint(training.resume_from_checkpoint, output_dir))
    return output_dir


def checkpoints_in(folder: Path) -> list[Path]:
    """The ``checkpoint-STEP`` folders of ``folder`` that hold a trainer state, by step."""
    found = [path for path in folder.glob("checkpoint-*") if (path / TRAINER_STATE_NAME).is_file()]
    return sorted(found, key=lambda path: int(path.name.rsplit("-", 1)[-1]) if path.name[11:].isdigit() else -1)


def resolve_checkpoint(given: str, output_dir: Path) -> Path:
    """The checkpoint folder ``--resume_from_checkpoint`` names (``last``: the newest in ``output_dir``)."""
    available = checkpoints_in(output_dir) if output_dir.is_dir() else []
    listing = ", ".join(str(path) for path in available[-3:]) or "none"
    path = Path(given)
    if given.lower() in LAST_CHECKPOINT and not path.exists():
        if not available:
            raise UsageError(
                f"--resume_from_checkpoint {given}: {output_dir} holds no checkpoint-* folder to resume from; "
                f"checkpoints are written with --save_strategy steps|epoch"
            )
        return available[-1]
    if not path.is_dir():
        raise UsageError(
            f"--resume_from_checkpoint {given} does not exist; give a checkpoint folder written by --save_strategy "
            f"(checkpoints in {output_dir}: {listing}), or 'last' for the newest"
        )
    if not (path / TRAINER_STATE_NAME).is_file():
        raise UsageError(
            f"--resume_from_checkpoint {given} is not a Trainer checkpoint (it has no {TRAINER_STATE_NAME}); give a "
            f"checkpoint-STEP folder (checkpoints in {output_dir}: {listing})"
        )
    return path


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


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


def epoch_history(log_history: list[dict]) -> list[dict]:
    """One row per evaluation: epoch, the last logged training loss before it, and the eval metrics."""
    rows, last_loss = [], None
    for entry in log_history:
        if "loss" in entry:
            last_loss = entry["loss"]
        if "eval_accuracy" in entry:
            row = {"epoch": round(entry.get("epoch", 0.0), 4), "step": entry.get("step"), "train_loss": last_loss}
            row.update({key: value for key, value in entry.items() if key.startswith("eval_")})
            rows.append(row)
    return rows


def format_history_table(history: list[dict]) -> str:
    lines = [f"{'epoch':>7}  {'train_loss':>10}  {'valid_acc':>9}  {'macro_f1':>8}  {'invalid':>7}"]
    for row in history:
        loss = f"{row['train_loss']:.4f}" if row["train_loss"] is not None else "-"
        epoch = f"{row['epoch']:g}"
        lines.append(
            f"{epoch:>7}  {loss:>10}  {row['eval_accuracy']:>9.4f}  {row['eval_macro_f1']:>8.4f}  "
            f"{row['eval_invalid_rate']:>7.4f}"
        )
    return "\n".join(lines)


def run_parsed_experiment(args: ParsedArguments, callbacks: list | None = None) -> dict:
    """Run one experiment from already parsed arguments (see :func:`run_experiment`)."""
    from transformers import DataCollatorForSeq2Seq, set_seed

    experiment, training = args.experiment, args.training
    method = get_method(experiment.method)
    method.builder(experiment.implementation)  # refuse a missing library before loading anything
    learning_rate_given = training.learning_rate is not None
    if not learning_rate_given:
        training.learning_rate = method.default_learning_rate
    output_dir = _prepare_output_dir(args)
    push = push_settings(training, output_dir)
    # Our own push after training (hub.py): Trainer's would push every checkpoint, tokenizer and training arguments.
    training.push_to_hub = False
    started = datetime.now(timezone.utc)
    reset_peak_memory()
    set_seed(training.seed)

    tokenizer = load_tokenizer(args.model.model_name_or_path, args.model.tokenizer_name_or_path)
    data = load_data(args.data, tokenizer, seed=training.data_seed if training.data_seed is not None else training.seed)
    base = load_base_model(args.model.model_name_or_path, random_init=args.model.random_init, seed=training.seed)
    base_saved_locally = experiment.method != "full" and (
        args.model.random_init or args.model.model_name_or_path == TINY_MODEL_NAME
    )
    if base_saved_locally:  # the delta must name a base it can be loaded onto: this one is kept beside it
        base.name_or_path = base.config._name_or_path = BASE_FOLDER
    model = method.builder(experiment.implementation)(base, args.options, tokenizer)  # checks the method's options
    parameters = count_parameters(model)

    # Everything is checked: from here on, files are written.
    _barrier()  # every process has checked output_dir before any of them writes to it
    base_dir = output_dir / BASE_FOLDER
    if base_saved_locally and training.process_index == 0 and not (training.resume_from_checkpoint and base_dir.is_dir()):
        # The same random weights, rebuilt from the seed: the method has already changed ``base`` in place.
        load_base_model(args.model.model_name_or_path, random_init=args.model.random_init, seed=training.seed) \
            .save_pretrained(base_dir)

    def save_trainable(trained_model, directory: str, state_dict=None) -> None:
        save_artifact(trained_model, experiment.method, experiment.implementation, directory, state_dict)

    trainer = GenerationAccuracyTrainer(
        model=model,
        args=training,
        train_dataset=data.train_dataset,
        eval_dataset=data.eval_dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
        processing_class=tokenizer,
        label_words=data.label_words,
        save_trainable=save_trainable,
        load_trainable=method.load_library if experiment.implementation == "library" else None,
        callbacks=callbacks,
    )
    train_output = trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    history = epoch_history(trainer.state.log_history)
    if not history:  # no evaluation during training (--eval_strategy no): evaluate once at the end
        trainer.evaluate()
        history = epoch_history(trainer.state.log_history)
    final = history[-1]
    best = max(history, key=lambda row: row["eval_accuracy"])
    peak_memory_mb, memory_kind = peak_memory()

    artifact_dir = output_dir / ARTIFACT_FOLDER
    artifact_size = None
    # Every process takes part (FSDP and DeepSpeed gather the weights); process 0 writes them, with the tokenizer.
    trainer.save_model(str(artifact_dir))
    if trainer.is_world_process_zero():
        (artifact_dir / TRAINING_ARGS_NAME).unlink(missing_ok=True)  # a pickle; checkpoints keep Trainer's copy
        artifact_size = sum((artifact_dir / name).stat().st_size for name in pushed_files(artifact_dir))

    results = {
        "method": experiment.method,
        "implementation": experiment.implementation,
        "model_name_or_path": args.model.model_name_or_path,
        "dataset_name": args.data.dataset_name,
        "random_init": args.model.random_init or args.model.model_name_or_path == TINY_MODEL_NAME,
        "label_words": data.label_words,
        "max_new_tokens": trainer.max_new_tokens,
        "num_train_examples": len(data.train_dataset),
        "num_eval_examples": len(data.eval_dataset),
        "world_size": training.world_size,
        "learning_rate": training.learning_rate,
        "learning_rate_source": "given" if learning_rate_given else method.learning_rate_source,
        "history": history,
        "best_accuracy": best["eval_accuracy"],
        "best_epoch": best["epoch"],
        "final_metrics": {key: value for key, value in final.items() if key.startswith("eval_")},
        "parameters": parameters,
        "train_runtime_s": train_output.metrics.get("train_runtime"),
        "train_samples_per_second": train_output.metrics.get("train_samples_per_second"),
        "train_loss": train_output.metrics.get("train_loss"),
        "eval_runtime_s": final.get("eval_runtime"),
        "eval_samples_per_second": final.get("eval_samples_per_second"),
        "peak_memory_mb": peak_memory_mb,
        "peak_memory_kind": memory_kind,
        "artifact_dir": str(artifact_dir),
        "artifact_size_bytes": artifact_size,
        "versions": library_versions(),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": args.to_dict(),
    }
    if trainer.is_world_process_zero():
        write_predictions(output_dir / PREDICTIONS_NAME, data.label_words, trainer.last_eval_class_ids)
        write_model_card(artifact_dir, results, push.repo_id if push else None)
        write_results(output_dir, results)
        print_summary(results)
        if push is not None:
            results["hub"] = push_run(output_dir, push)
            write_results(output_dir, results)
            print(f"pushed {', '.join(results['hub']['files'])} to {results['hub']['url']}")
    return results


def write_results(output_dir: Path, results: dict) -> None:
    (output_dir / RESULTS_NAME).write_text(json.dumps(results, indent=2, default=str) + "\n")


def write_predictions(path: Path, label_words: list[str], class_ids: dict[str, list[int]] | None) -> None:
    """The last evaluation's generated and reference class ids, one per evaluation example, in dataset order."""
    if class_ids is None:
        return
    record = {"label_words": label_words, "invalid": -1, **class_ids}
    path.write_text(json.dumps(record, separators=(",", ":")) + "\n")


def print_summary(results: dict, stream=None) -> None:
    """The reference notebook's per-epoch table and a final line with the best accuracy and parameter counts."""
    stream = stream or sys.stdout
    parameters = results["parameters"]
    print(f"\n{results['method']} / {results['implementation']} on {results['model_name_or_path']}"
          + (" (random init)" if results["random_init"] else ""), file=stream)
    print(format_history_table(results["history"]), file=stream)
    print(
        f"best valid_acc {results['best_accuracy']:.4f} at epoch {results['best_epoch']:g} | parameters: total "
        f"{parameters['total']:,}, trainable {parameters['trainable']:,} ({parameters['trainable_percent']:.4f}%) | "
        f"results: {Path(results['artifact_dir']).parent / RESULTS_NAME}",
        file=stream,
    )
