"""A run's output folder: which folder, whether it may be written, which checkpoint to resume, and its JSON files.

What ``output_dir`` holds after a run is listed in :mod:`hf_peft_suite.experiment`. The policy here: a folder that
holds a previous run is never written into unless the user resumes it or asks to overwrite it; several processes
launched together must all see the same folder and train together.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME

from .errors import UsageError
from .files import RESULTS_NAME

LAST_CHECKPOINT = ("last", "true")


def launched_world_size() -> int:
    """How many processes a launcher (``torchrun``, ``accelerate launch``) started together."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_launch(training) -> None:
    """Refuse processes that a launcher started together but that would not train together.

    ``torchrun``/``accelerate launch`` set ``WORLD_SIZE``; if the training arguments see fewer processes (on a
    machine without GPUs and without ``--use_cpu``, or an FSDP/DeepSpeed config on CPUs), each process would train
    alone and all of them would write the same ``output_dir``.
    """
    launched = launched_world_size()
    if launched > 1 and training.world_size != launched:
        raise UsageError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but each trains alone (world size "
            f"{training.world_size}), so they would overwrite each other's results; on CPUs pass --use_cpu true "
            f"(accelerate: --multi_gpu with use_cpu, not FSDP or DeepSpeed), on GPUs give each process one GPU"
        )


def prepare_output_dir(training, method: str, implementation: str) -> Path:
    """The run's folder (``outputs/METHOD-IMPL-TIME`` when none is given), checked but not created; resolves
    ``training.resume_from_checkpoint`` to a checkpoint folder."""
    check_launch(training)
    if training.output_dir in (None, "", "trainer_output"):
        if launched_world_size() > 1:
            raise UsageError("give --output_dir when launching several processes, so that all of them write one run")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        training.output_dir = os.path.join("outputs", f"{method}-{implementation}-{stamp}")
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


def write_results(output_dir: Path, results: dict) -> None:
    (Path(output_dir) / RESULTS_NAME).write_text(json.dumps(results, indent=2, default=str) + "\n")


def write_predictions(path: Path, label_words: list[str], class_ids: dict[str, list[int]] | None) -> None:
    """The last evaluation's generated and reference class ids, one per evaluation example, in dataset order."""
    if class_ids is None:
        return
    record = {"label_words": label_words, "invalid": -1, **class_ids}
    path.write_text(json.dumps(record, separators=(",", ":")) + "\n")
