"""A run's output folder: which folder, whether it may be written, which checkpoint to resume, and its JSON files.

What ``output_dir`` holds after a run is listed in :mod:`hf_peft_suite.experiment`. The policy here: a folder that
holds a previous run is never written into unless the user resumes it or asks to overwrite it; several processes
launched together must all see the same folder and train together.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from datetime import datetime
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME

from .errors import UsageError
from .files import ARTIFACT_FOLDER, BASE_FOLDER, ERROR_NAME, PREDICTIONS_NAME, RESULTS_NAME
from .launch import check_launch, launched_world_size
from .weights import first_line

LAST_CHECKPOINT = ("last", "true")


def timestamp() -> str:
    """The local time as it names a run's default output folder: ``20261129-195424``."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def prepare_output_dir(training, method: str, implementation: str) -> Path:
    """The run's folder (``outputs/METHOD-IMPL-TIME`` when none is given), checked but not created; resolves
    ``training.resume_from_checkpoint`` to a checkpoint folder.

    Refused: a file; a place where no folder can be made; a folder holding a previous run, unless the run resumes it
    from one of its own checkpoints (a run that has not finished) or ``--overwrite_output_dir`` replaces it; a
    finished run (``results.json``) is never resumed into.
    """
    check_launch(training)
    if training.output_dir in (None, "", "trainer_output"):
        if launched_world_size() > 1:
            raise UsageError("give --output_dir when launching several processes, so that all of them write one run")
        training.output_dir = os.path.join("outputs", f"{method}-{implementation}-{timestamp()}")
    output_dir = Path(training.output_dir)
    check_can_create(output_dir, "--output_dir")
    if training.resume_from_checkpoint:
        training.resume_from_checkpoint = str(resolve_checkpoint(training.resume_from_checkpoint, output_dir))
    if training.overwrite_output_dir:
        return output_dir
    previous = output_dir.is_dir() and any(path.name != LOCK_NAME for path in output_dir.iterdir())
    if previous and not training.resume_from_checkpoint:
        raise UsageError(
            f"--output_dir {output_dir} already holds a previous run; choose a new --output_dir, resume it with "
            f"--resume_from_checkpoint, or pass --overwrite_output_dir to replace it"
        )
    if (output_dir / RESULTS_NAME).is_file():
        raise UsageError(
            f"--output_dir {output_dir} holds a finished run ({RESULTS_NAME}): resuming into it would replace it; "
            f"choose a new --output_dir, or pass --overwrite_output_dir to replace it"
        )
    checkpoint = Path(training.resume_from_checkpoint or "")
    if previous and checkpoint.resolve().parent != output_dir.resolve():
        raise UsageError(
            f"--output_dir {output_dir} holds another run than the one --resume_from_checkpoint {checkpoint} belongs "
            f"to; resume into the checkpoint's own folder ({checkpoint.parent}), or into a new --output_dir"
        )
    return output_dir


def check_can_create(folder: Path, option: str) -> None:
    """Refuse a folder that cannot be made or written: a file in the way, or a place without write permission."""
    try:
        if folder.is_file():
            raise UsageError(f"{option} {folder} is a file; give a folder")
        existing = folder.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent  # the nearest part of the path that exists
    except PermissionError as error:
        raise UsageError(f"{option} {folder} cannot be reached: {error.filename} is not accessible to you; give "
                         f"another path") from None
    if existing.exists() and not existing.is_dir():
        raise UsageError(f"{option} {folder} cannot be made: {existing} is a file, not a folder; give another path")
    effective = os.access in os.supports_effective_ids  # the permissions of whoever the process acts as
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK, effective_ids=effective):
        raise UsageError(f"{option} {folder} cannot be written: {existing} is not writable by you; give another path")


# --------------------------------------------------------------------------------------------- claiming a folder
LOCK_NAME = ".hf_peft_suite.lock"
# What a run writes into its folder, removed when --overwrite_output_dir replaces a previous run (nothing else is).
RUN_OUTPUTS = (RESULTS_NAME, PREDICTIONS_NAME, ARTIFACT_FOLDER, BASE_FOLDER, ERROR_NAME, "checkpoint-*")


class FolderClaim:
    """Exclusive use of a run's folder while the run writes into it (process 0 holds it; a lock file).

    The lock file is created atomically (``O_CREAT | O_EXCL``), so of two runs started into one folder at the same
    time exactly one gets it; the other is refused before it writes anything. It holds the owner's host and process
    id: a lock left by a run that crashed (its process is gone) is taken over. ``release()`` removes it.
    """

    def __init__(self, folder: Path):
        self.folder, self.path, self.held = folder, folder / LOCK_NAME, False

    def acquire(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"--output_dir {self.folder} cannot be made ({error.strerror}); give another path") from None
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    raise UsageError(
                        f"--output_dir {self.folder} is in use by another run ({self._owner()}); wait for it to finish "
                        f"or choose another --output_dir"
                    ) from None
                self.path.unlink(missing_ok=True)  # its run is gone: take the folder over
                continue
            with os.fdopen(descriptor, "w") as file:
                json.dump({"host": socket.gethostname(), "pid": os.getpid()}, file)
            self.held = True
            return
        raise UsageError(f"--output_dir {self.folder} is being claimed by another run; choose another --output_dir")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _owner(self) -> str:
        try:
            owner = json.loads(self.path.read_text())
            return f"process {owner['pid']} on {owner['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "a run whose lock cannot be read"

    def _stale(self) -> bool:
        """Whether the lock's run is gone (same host, no such process). A lock from another host is never stale."""
        try:
            owner = json.loads(self.path.read_text())
            pid, host = int(owner["pid"]), owner["host"]
        except FileNotFoundError:
            return True
        except (OSError, ValueError, KeyError, TypeError):
            return False  # being written right now, or not ours to judge
        if host != socket.gethostname():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def remove_previous_run(folder: Path) -> None:
    """What a previous run wrote into ``folder`` (``--overwrite_output_dir``): its results, model, base, checkpoints."""
    for pattern in RUN_OUTPUTS:
        for path in folder.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


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
    try:
        json.loads((path / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(
            f"--resume_from_checkpoint {path}: its {TRAINER_STATE_NAME} is damaged ({first_line(error)}); resume from "
            f"an earlier checkpoint (checkpoints in {output_dir}: {listing})"
        ) from None
    return path


def write_results(output_dir: Path, results: dict) -> None:
    (Path(output_dir) / RESULTS_NAME).write_text(json.dumps(results, indent=2, default=str) + "\n")


def write_predictions(path: Path, label_words: list[str], class_ids: dict[str, list[int]] | None) -> None:
    """The last evaluation's generated and reference class ids, one per evaluation example, in dataset order."""
    if class_ids is None:
        return
    record = {"label_words": label_words, "invalid": -1, **class_ids}
    path.write_text(json.dumps(record, separators=(",", ":")) + "\n")
