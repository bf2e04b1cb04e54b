"""``GenerationAccuracyTrainer``: a ``Seq2SeqTrainer`` scored on the label words the model *generates*.

Every cell of the comparison (full fine-tuning, prompt tuning, adapters, LoRA; scratch and library) is trained and
evaluated by this one class, so all are measured the same way:

- evaluation runs ``generate`` with ``max_new_tokens`` = the longest tokenized label word (2 for ``positive</s>``),
  decodes, maps each text to its class (anything else is invalid) and reports accuracy, macro-F1, invalid rate;
- it is exact under distributed evaluation: ``Seq2SeqTrainer.evaluate`` gathers with ``accelerator.gather``, so when
  N examples do not divide evenly across processes and batches, the last batches are padded with repeated examples.
  Those come last in the gathered arrays and are dropped, so each of the N examples is scored exactly once
  (``eval_num_scored`` == N); the class ids of the last evaluation stay in :attr:`last_eval_class_ids`, in the order
  of the eval dataset (evaluation never reorders it, also not under ``--group_by_length``);
- ``--group_by_length`` batches are drawn from the seed and the epoch (:class:`EpochSeededLengthGroupedSampler`), so a
  run resumed mid-epoch sees the batches the interrupted run would have seen;
- checkpoints hold what the cell trains: ``save_trainable`` / ``load_trainable`` write and read the trainable weights
  in the cell's own format (AdapterHub's ``save_pretrained`` would write the whole model), and resuming refuses a
  checkpoint whose weights do not match the model's trainable parameters (another method, other options, another
  base) or cannot be read, with a :class:`~hf_peft_suite.errors.UsageError` instead of a silent partial load.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any, Callable

import torch
from torch.utils.data import SequentialSampler
from transformers import Seq2SeqTrainer
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import has_length

from .errors import UsageError
from .metrics import LabelScorer
from .weights import compare_shapes, config_differences, first_line, tensor_shapes

TRAINING_ARGS_NAME = "training_args.bin"
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"


class GenerationAccuracyTrainer(Seq2SeqTrainer):
    """A ``Seq2SeqTrainer`` whose metric is the accuracy of generated label words.

    Args:
        label_words: the word for each class id, as in the training targets.
        processing_class: the tokenizer (needed to decode generations).
        save_trainable: ``(model, directory, state_dict) -> None`` writing the model's trainable weights (and their
            config) for checkpoints and ``save_model``; ``state_dict`` is the full state dict Trainer gathers under
            FSDP or DeepSpeed, ``None`` otherwise. ``None`` means the model's own ``save_pretrained``.
        load_trainable: ``(model, directory) -> None`` loading what ``save_trainable`` wrote, to resume; ``None``
            means ``Trainer``'s own loading (``model.safetensors`` or a peft adapter), checked against the model.
        Everything else as for ``Seq2SeqTrainer``; ``args.predict_with_generate`` must be true.
    """

    def __init__(
        self,
        *args,
        label_words: list[str],
        processing_class=None,
        save_trainable: Callable[[Any, str, dict | None], None] | None = None,
        load_trainable: Callable[[Any, str], None] | None = None,
        **kwargs,
    ):
        if processing_class is None:
            raise ValueError("GenerationAccuracyTrainer needs processing_class=<the tokenizer> to decode generations")
        self.scorer = LabelScorer(processing_class, label_words)
        self.save_trainable = save_trainable
        self.load_trainable = load_trainable
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
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        expected = self._expected_eval_examples
        if expected is not None and len(predictions) > expected:
            # Distributed padding: repeated examples fill the last batches and come last after the gather.
            predictions, label_ids = predictions[:expected], label_ids[:expected]
        predicted, references = self.scorer.class_ids(predictions, label_ids)
        self.last_eval_class_ids = {"predictions": predicted, "references": references}
        return self.scorer.score_ids(predicted, references)

    # ------------------------------------------------------------------------------------------ checkpoints
    def _save(self, output_dir: str | None = None, state_dict=None):
        """Write the trainable weights in the cell's format, the tokenizer and the training arguments."""
        if self.save_trainable is None:
            return super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:
            return None
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.save_trainable(self.accelerator.unwrap_model(self.model), output_dir, state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))  # as Trainer does (a pickle)
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        try:
            if self.load_trainable is not None:
                self.load_trainable(model, resume_from_checkpoint)
                return
            check_checkpoint_config(model, resume_from_checkpoint)
            check_checkpoint_weights(model, resume_from_checkpoint)
            super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        except UsageError as error:
            raise UsageError(f"cannot resume from {resume_from_checkpoint}: {error}") from None
        except Exception as error:  # a damaged file, a shape mismatch: the user's checkpoint, not our bug
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
    except UsageError:
        raise
    except Exception as error:
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


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def check_checkpoint_config(model, checkpoint: str) -> None:
    """A hand-written delta's or peft adapter's checkpoint must have been saved with this run's options."""
    from .methods.delta import DeltaModel

    if isinstance(model, DeltaModel):
        path, current = os.path.join(checkpoint, "config.json"), model.config.to_dict()
    elif is_peft_model(model):
        path, current = os.path.join(checkpoint, PEFT_CONFIG_NAME), model.peft_config["default"].to_dict()
    else:
        return
    if not os.path.isfile(path):
        raise UsageError(f"it holds no {os.path.basename(path)}, so it was not written by this method")
    with open(path, encoding="utf-8") as file:
        saved = json.load(file)
    differences = config_differences(saved, current)
    if differences:
        raise UsageError(
            f"it was saved with other options ({'; '.join(differences[:3])}); resume with the arguments of the run "
            f"that wrote it"
        )


def check_checkpoint_weights(model, checkpoint: str) -> None:
    """The checkpoint's weights file must be readable and, for a delta or a peft adapter, hold exactly the tensors
    (names and shapes) that the model's ``save_pretrained`` writes; a full model is checked after loading
    (:meth:`GenerationAccuracyTrainer._issue_warnings_after_load`)."""
    from .methods.delta import DELTA_WEIGHTS_NAME, DeltaModel

    if is_peft_model(model):
        from peft import get_peft_model_state_dict

        path = os.path.join(checkpoint, PEFT_WEIGHTS_NAME)
        expected = get_peft_model_state_dict(model, save_embedding_layers=False)
    else:
        path = os.path.join(checkpoint, DELTA_WEIGHTS_NAME)
        expected = model.delta_state_dict() if isinstance(model, DeltaModel) else None
    if not os.path.isfile(path):
        if expected is None and os.path.isfile(path + ".index.json"):
            return  # a sharded full model: Trainer loads the shards, then the load result is checked
        raise UsageError(f"it holds no {os.path.basename(path)}, the weights this model saves")
    saved = tensor_shapes(path)
    if expected is not None:
        compare_shapes({name: tuple(tensor.shape) for name, tensor in expected.items()}, saved, path)
