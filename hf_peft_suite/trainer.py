"""``GenerationAccuracyTrainer``: a ``Seq2SeqTrainer`` scored on the label words the model *generates*.

Every cell of the comparison (full fine-tuning, prompt tuning, adapters, LoRA; scratch and library) is trained and
evaluated by this one class, so all are measured the same way:

- evaluation runs ``generate`` with ``max_new_tokens`` = the longest tokenized label word (2 for ``positive</s>``),
  decodes, maps each text to its class (anything else is invalid) and reports accuracy, macro-F1, invalid rate;
- the encoder runs once per evaluation batch: ``eval_loss`` comes from the encoder output ``generate`` computed
  (:mod:`hf_peft_suite.one_pass`), not from a second full forward pass as in ``Seq2SeqTrainer``; it is the mean
  cross-entropy per label token over the evaluation set, whatever the batching or the number of processes;
- with ``--bf16`` the whole evaluation step, ``generate``'s encoder included, runs under autocast (on CPUs too);
- it is exact under distributed evaluation: ``Seq2SeqTrainer.evaluate`` gathers with ``accelerator.gather``, so when
  N examples do not divide evenly across processes and batches, the last batches are padded with repeated examples.
  Those come last in the gathered arrays and are dropped, from the predictions and from the loss alike, so each of
  the N examples is scored exactly once (``eval_num_scored`` == N); the class ids of the last evaluation stay in
  :attr:`last_eval_class_ids`, in the order of the eval dataset (evaluation never reorders it, also not under
  ``--group_by_length``);
- ``--group_by_length`` batches are drawn from the seed and the epoch (:class:`EpochSeededLengthGroupedSampler`), so a
  run resumed mid-epoch sees the batches the interrupted run would have seen;
- checkpoints hold what the cell trains: the cell's :class:`~hf_peft_suite.methods.formats.ArtifactFormat` writes
  and reads its trainable weights (AdapterHub's ``save_pretrained`` would write the whole model), and resuming refuses
  a checkpoint whose weights do not match the model's trainable parameters (another method, other options, another
  base) or cannot be read, with a :class:`~hf_peft_suite.errors.UsageError` instead of a silent partial load.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
from typing import Callable

import torch
from torch.utils.data import SequentialSampler
from transformers import Seq2SeqTrainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import has_length

from .errors import UsageError
from .methods.formats import ArtifactFormat
from .metrics import LabelScorer
from .one_pass import capture_encoder, decoding_model, label_token_losses, reusable, reusable_cross_attention
from .weights import first_line

# What loading a damaged or foreign checkpoint raises (safetensors' SafetensorError is added where it is used):
# a missing or unreadable file, a size mismatch in load_state_dict, a refused or truncated pickle.
CHECKPOINT_LOAD_ERRORS = (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError)


class GenerationAccuracyTrainer(Seq2SeqTrainer):
    """A ``Seq2SeqTrainer`` whose metric is the accuracy of generated label words.

    Args:
        label_words: the word for each class id, as in the training targets.
        processing_class: the tokenizer (needed to decode generations).
        artifact_format: how the cell writes, checks and reads its trainable weights in checkpoints and
            ``save_model`` (``get_method(name).artifact_format(implementation)``); ``None``: the model's own
            ``save_pretrained`` and ``Trainer``'s loading, with the load result checked against the model.
        Everything else as for ``Seq2SeqTrainer``; ``args.predict_with_generate`` must be true.
    """

    def __init__(
        self,
        *args,
        label_words: list[str],
        processing_class=None,
        artifact_format: ArtifactFormat | None = None,
        **kwargs,
    ):
        if processing_class is None:
            raise ValueError("GenerationAccuracyTrainer needs processing_class=<the tokenizer> to decode generations")
        self.scorer = LabelScorer(processing_class, label_words)
        self.artifact_format = artifact_format or ArtifactFormat()
        self._expected_eval_examples: int | None = None
        self.last_eval_class_ids: dict[str, list[int]] | None = None
        kwargs.setdefault("compute_metrics", self._compute_metrics)
        super().__init__(*args, processing_class=processing_class, **kwargs)
        # Every cell averages the loss per batch, as T5's own forward does on transformers 4.57. On 5.x Trainer would
        # pass num_items_in_batch to models whose forward takes **kwargs (peft wrappers, AdapterHub's T5), and the
        # cells would normalise the loss differently under gradient accumulation.
        self.model_accepts_loss_kwargs = False
        if not self.args.predict_with_generate:
            raise ValueError("GenerationAccuracyTrainer scores generated words: set predict_with_generate=True")

    @property
    def max_new_tokens(self) -> int:
        return self.scorer.max_new_tokens

    # ---------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval", **gen_kwargs):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, dict):
            raise ValueError("evaluate one dataset at a time")
        if "max_length" not in gen_kwargs and self.args.generation_max_length is None:
            gen_kwargs.setdefault("max_new_tokens", self.max_new_tokens)
        self._expected_eval_examples = len(dataset)
        try:
            return super().evaluate(dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix, **gen_kwargs)
        finally:
            self._expected_eval_examples = None

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        """Generate, and take the loss from the encoder output generation computed (one encoder pass).

        Returns ``(None, (generated ids, per-example label-token loss sums and counts), labels)``: the loss travels
        with the predictions, so the padded repeats of distributed evaluation are dropped from it as from them
        (:meth:`_compute_metrics`). Falls back to ``Seq2SeqTrainer``'s two passes where the encoder output cannot
        be reused (peft prefix tuning, label smoothing, FSDP or DeepSpeed-sharded models).
        """
        if (prediction_loss_only or self.label_smoother is not None or self.is_fsdp_enabled
                or self.is_deepspeed_enabled or "labels" not in inputs or not reusable(model)):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        inputs = self._prepare_inputs(inputs)
        gen_kwargs = {**getattr(self, "_gen_kwargs", {}), **gen_kwargs}
        gen_kwargs = {key: value for key, value in gen_kwargs.items() if value is not None}
        labels = inputs["labels"]
        with torch.no_grad(), self.accelerator.autocast(), capture_encoder(model) as encoded:
            output = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                    return_dict_in_generate=True, **gen_kwargs)
            cache = reusable_cross_attention(output, len(labels))
            logits = decoding_model(model)(encoder_outputs=encoded.outputs, attention_mask=encoded.attention_mask,
                                           labels=labels, past_key_values=cache, use_cache=cache is not None).logits
        return None, (output.sequences, label_token_losses(logits, labels)), labels

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """No batches once ``max_steps`` is reached: resumed from the run's last checkpoint, Trainer would train one
        step past ``--max_steps`` (it checks only after a step), and the run would not end where it should."""
        if 0 < self.state.max_steps <= self.state.global_step:
            return [], None
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def _get_train_sampler(self, *args, **kwargs):
        sampler = super()._get_train_sampler(*args, **kwargs)
        if isinstance(sampler, LengthGroupedSampler):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler = EpochSeededLengthGroupedSampler(sampler, seed, lambda: self.state.epoch)
        return sampler

    def _get_eval_sampler(self, eval_dataset):
        """The evaluation set in its own order, also under ``--group_by_length`` (which would shuffle it by length
        groups): ``load_data`` has already sorted it by length, and the scored class ids must line up with it."""
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None  # else: accelerate shards it

    def _compute_metrics(self, eval_prediction) -> dict[str, float]:
        predictions, label_ids = eval_prediction.predictions, eval_prediction.label_ids
        loss_sums = None
        if isinstance(predictions, tuple):
            predictions, loss_sums = predictions[0], (predictions[1] if len(predictions) > 1 else None)
        expected = self._expected_eval_examples
        if expected is not None and len(predictions) > expected:
            # Distributed padding: repeated examples fill the last batches and come last after the gather.
            predictions, label_ids = predictions[:expected], label_ids[:expected]
            loss_sums = loss_sums[:expected] if loss_sums is not None else None
        predicted, references = self.scorer.class_ids(predictions, label_ids)
        self.last_eval_class_ids = {"predictions": predicted, "references": references}
        metrics = self.scorer.score_ids(predicted, references)
        if loss_sums is not None:  # one encoder pass: the loss came with the predictions (see prediction_step)
            metrics = {"loss": float(loss_sums[:, 0].sum() / max(loss_sums[:, 1].sum(), 1.0)), **metrics}
        return metrics

    # ------------------------------------------------------------------------------------------ checkpoints
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

    def check_checkpoint(self, checkpoint: str) -> None:
        """Refuse, before anything is loaded, a checkpoint this model cannot resume from (see the module docstring)."""
        try:
            self.artifact_format.check(self.accelerator.unwrap_model(self.model), checkpoint)
        except UsageError as error:
            raise UsageError(f"cannot resume from {checkpoint}: {error}") from None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from safetensors import SafetensorError

        model = model if model is not None else self.model
        self.check_checkpoint(resume_from_checkpoint)
        try:
            if not self.artifact_format.load(model, resume_from_checkpoint):
                super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        except UsageError as error:
            raise UsageError(f"cannot resume from {resume_from_checkpoint}: {error}") from None
        except (SafetensorError, *CHECKPOINT_LOAD_ERRORS) as error:  # a damaged file, a shape mismatch
            raise UsageError(
                f"cannot resume from {resume_from_checkpoint}: its weights cannot be loaded into this model "
                f"({type(error).__name__}: {first_line(error)}); resume from an earlier checkpoint, or start again"
            ) from None

    def _issue_warnings_after_load(self, load_result):
        """Refuse, rather than warn about, a checkpoint that lacks trainable weights or holds foreign ones."""
        trainable = {name for name, parameter in self.model.named_parameters() if parameter.requires_grad}
        missing = sorted(trainable & set(load_result.missing_keys))
        unexpected = sorted(load_result.unexpected_keys)
        if missing or unexpected:
            raise UsageError(
                f"its weights do not match this model's trainable parameters (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}; {len(missing)} missing, {len(unexpected)} unexpected): it was saved by another "
                f"method or with other options; resume with the arguments of the run that wrote it"
            )
        super()._issue_warnings_after_load(load_result)

    def _load_optimizer_and_scheduler(self, checkpoint):
        with _refusing_unloadable_state(checkpoint, "optimizer or scheduler state"):
            super()._load_optimizer_and_scheduler(checkpoint)

    def _load_rng_state(self, checkpoint):
        with _refusing_unloadable_state(checkpoint, "random number generator state"):
            super()._load_rng_state(checkpoint)


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


class EpochSeededLengthGroupedSampler(torch.utils.data.Sampler):
    """Trainer's ``--group_by_length`` order, drawn from ``(seed, epoch)`` instead of the global random generator.

    Trainer's ``LengthGroupedSampler`` draws each epoch's permutation from the global generator as the epoch starts;
    a run resumed in the middle of an epoch starts that epoch again with another generator state, so it would see
    other batches than the run it continues. Seeded by the epoch, the order is the same. The epoch is read from the
    trainer's state (``epoch_of()``: 1.33 while resuming a third into epoch 1) rather than from ``set_epoch``, which
    accelerate does not forward to the sampler under several processes.
    """

    def __init__(self, sampler: LengthGroupedSampler, seed: int, epoch_of: Callable[[], float]):
        self.sampler, self.seed, self.epoch_of = sampler, seed, epoch_of

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = math.floor((self.epoch_of() or 0.0) + 1e-6)
        self.sampler.generator = torch.Generator().manual_seed(self.seed + epoch)
        return iter(self.sampler)
