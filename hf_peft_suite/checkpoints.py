"""Checkpoints in the cell's own artifact format: what is saved, what resuming loads, and what the best model is.

:class:`ArtifactCheckpoints` is a ``Trainer`` mixin (``GenerationAccuracyTrainer`` uses it). Every folder Trainer
writes (``--save_strategy`` checkpoints and ``save_model``) holds what the cell trains, written by the cell's
:class:`~hf_peft_suite.methods.formats.ArtifactFormat` (AdapterHub's ``save_pretrained`` would write the whole model).
Reading one back goes through the same format in both cases Trainer reads one:

- resuming (``--resume_from_checkpoint``): the checkpoint is checked against the model first (the method's options,
  names, shapes, readable files) and refused with a :class:`~hf_peft_suite.errors.UsageError` instead of a silent
  partial load; damaged optimizer, scheduler or random-number-generator state is refused the same way;
- the best model (``--load_best_model_at_end``): the best checkpoint is checked and loaded the same way, for every
  format (Trainer's own loader knows only whole models and peft adapters, and would leave an AdapterHub cell at its
  last epoch without a word).

A run resumed from its last checkpoint at ``--max_steps`` trains no step past it (:meth:`get_batch_samples`).

Trainer has no public hooks for these: the private methods overridden here, and ``get_batch_samples``, are listed in
:data:`hf_peft_suite.compat.INTERNALS`. Under FSDP and DeepSpeed, Trainer's own loaders read the sharded state.
"""

from __future__ import annotations

import contextlib
import os
import pickle

import torch
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from .errors import UsageError
from .methods.formats import ArtifactFormat
from .weights import first_line

# What loading a damaged or foreign checkpoint raises (safetensors' SafetensorError is added where it is used):
# a missing or unreadable file, a size mismatch in load_state_dict, a refused or truncated pickle.
CHECKPOINT_LOAD_ERRORS = (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError)


class ArtifactCheckpoints(Trainer):
    """Checkpoints written and read in :attr:`artifact_format` (see the module docstring)."""

    artifact_format: ArtifactFormat

    # ------------------------------------------------------------------------------------------------ saving
    def _save(self, output_dir: str | None = None, state_dict=None):
        """Write the trainable weights in the cell's format, the tokenizer and the training arguments."""
        if not self.args.should_save:
            return None
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.artifact_format.save(self.accelerator.unwrap_model(self.model), output_dir, state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))  # as Trainer does (a pickle)
        return None

    # ------------------------------------------------------------------------------------------------ loading
    def check_checkpoint(self, checkpoint: str, purpose: str = "resume from") -> None:
        """Refuse, before anything is loaded, a checkpoint this model cannot load (see the module docstring)."""
        model = self.accelerator.unwrap_model(self.model)
        try:
            problem = self.artifact_format.reload_problem(model)
            if problem:
                raise UsageError(problem)
            self.artifact_format.check(model, checkpoint)
        except UsageError as error:
            raise UsageError(f"cannot {purpose} {checkpoint}: {error}") from None

    def load_checkpoint_weights(self, checkpoint: str, model, purpose: str) -> bool:
        """Check ``checkpoint`` and load its trainable weights into ``model`` in place; ``False`` when its format
        leaves the loading to Trainer (a sharded whole model)."""
        from safetensors import SafetensorError

        self.check_checkpoint(checkpoint, purpose)
        with _refusing_unloadable_weights(checkpoint, purpose, SafetensorError):
            return self.artifact_format.load(self.accelerator.unwrap_model(model), checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from safetensors import SafetensorError

        model = model if model is not None else self.model
        if not self.load_checkpoint_weights(resume_from_checkpoint, model, "resume from"):
            with _refusing_unloadable_weights(resume_from_checkpoint, "resume from", SafetensorError):
                super()._load_from_checkpoint(resume_from_checkpoint, model=model)

    def _load_best_model(self):
        """Load the best checkpoint (``state.best_model_checkpoint``) through the cell's format."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        if not self.load_checkpoint_weights(self.state.best_model_checkpoint, self.model, "load the best model from"):
            super()._load_best_model()
        return None

    def _load_optimizer_and_scheduler(self, checkpoint):
        with _refusing_unloadable_state(checkpoint, "optimizer or scheduler state"):
            super()._load_optimizer_and_scheduler(checkpoint)

    def _load_rng_state(self, checkpoint):
        with _refusing_unloadable_state(checkpoint, "random number generator state"):
            super()._load_rng_state(checkpoint)

    # ----------------------------------------------------------------------------------------------- resuming
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """No batches once ``max_steps`` is reached: resumed from the run's last checkpoint, Trainer would train one
        step past ``--max_steps`` (it checks only after a step), and the run would not end where it should."""
        if 0 < self.state.max_steps <= self.state.global_step:
            return [], None
        return super().get_batch_samples(epoch_iterator, num_batches, device)


@contextlib.contextmanager
def _refusing_unloadable_weights(checkpoint, purpose: str, *more_errors: type[BaseException]):
    """A damaged weights file or a shape mismatch found while loading: one UsageError instead of a traceback."""
    try:
        yield
    except UsageError as error:
        raise UsageError(f"cannot {purpose} {checkpoint}: {error}") from None
    except (*more_errors, *CHECKPOINT_LOAD_ERRORS) as error:
        raise UsageError(
            f"cannot {purpose} {checkpoint}: its weights cannot be loaded into this model "
            f"({type(error).__name__}: {first_line(error)}); use an earlier checkpoint, or start again"
        ) from None


@contextlib.contextmanager
def _refusing_unloadable_state(checkpoint, what: str):
    """Trainer loads these pickles with ``torch.load(weights_only=True)``: anything but tensors and plain containers
    (or a damaged file) is refused there, unexecuted; say so as a UsageError instead of a traceback."""
    try:
        yield
    except CHECKPOINT_LOAD_ERRORS as error:
        raise UsageError(
            f"cannot resume from {checkpoint}: its {what} cannot be loaded ({type(error).__name__}: "
            f"{first_line(error)}); resume from another checkpoint, or with the arguments of the run that wrote it"
        ) from None
