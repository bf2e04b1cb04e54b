"""``GenerationAccuracyTrainer``: a ``Seq2SeqTrainer`` scored on the label words the model *generates*.

Every cell of the comparison (full fine-tuning, prompt tuning, adapters, LoRA; scratch and library) is trained and
evaluated by this one class, so all are measured the same way. It is three concerns, each in its own file:

- **scoring** (here): evaluation runs ``generate`` with ``max_new_tokens`` = the longest tokenized label word (2 for
  ``positive</s>``), decodes, maps each text to its class (anything else is invalid) and reports accuracy, macro-F1,
  invalid rate and ``eval_loss``; a user's ``compute_metrics`` adds its own numbers to those (see
  :class:`~hf_peft_suite.metrics.GeneratedLabels`);
- **checkpoints** (:mod:`hf_peft_suite.checkpoints`): checkpoints, resuming and ``--load_best_model_at_end`` in the
  cell's own artifact format;
- **batch order** (:mod:`hf_peft_suite.sampling`): ``--group_by_length`` batches drawn from the seed and the epoch,
  evaluation in the dataset's order.

Scoring, in detail:

- the encoder runs once per evaluation batch: ``eval_loss`` comes from the encoder output ``generate`` computed
  (:mod:`hf_peft_suite.one_pass`), not from a second full forward pass as in ``Seq2SeqTrainer``; it is the mean
  cross-entropy per label token over the evaluation set, whatever the batching or the number of processes, and it
  stays the plain cross-entropy under ``--label_smoothing_factor`` (which smooths the training loss only);
- with ``--bf16`` the whole evaluation step, ``generate``'s encoder included, runs under autocast (on CPUs too);
- it is exact under distributed evaluation: ``Seq2SeqTrainer.evaluate`` gathers with ``accelerator.gather``, so when
  N examples do not divide evenly across processes and batches, the last batches are padded with repeated examples.
  Those come last in the gathered arrays and are dropped, from the predictions and from the loss alike, so each of
  the N examples is scored exactly once (``eval_num_scored`` == N); the class ids of the last evaluation stay in
  :attr:`last_eval_class_ids`, those of every evaluation by step in :attr:`eval_class_ids`, in the order of the eval
  dataset (evaluation never reorders it, also not under ``--group_by_length``).

Training, where Trainer's defaults do not fit a frozen base or an encoder-decoder:

- ``--label_smoothing_factor``: Trainer's label smoother takes ``labels`` away from the model's inputs, and T5 then
  has no decoder input; :meth:`compute_loss` gives it the decoder inputs the labels imply (what T5 builds itself);
- ``--gradient_checkpointing``: the frozen base's embeddings do not require grad, and re-entrant checkpointing (the
  default on transformers 4.57) then drops the gradients of everything trained inside the checkpointed blocks; the
  embeddings' output is made to require grad (``enable_input_require_grads``, as peft's
  ``prepare_model_for_gradient_checkpointing`` does);
- ``--neftune_noise_alpha``: the noise is added by :class:`~hf_peft_suite.neftune.NoisyEmbeddings`, which finds the
  embeddings of every cell (Trainer's own code does not find those of peft's prompt-learning models).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from transformers import Seq2SeqTrainer
from transformers.trainer import TRAINING_ARGS_NAME  # noqa: F401  (experiment.py imports it from here)

from .checkpoints import CHECKPOINT_LOAD_ERRORS, ArtifactCheckpoints  # noqa: F401  (re-exported)
from .errors import UsageError
from .methods import artifact_format_of
from .methods.formats import ArtifactFormat
from .metrics import GeneratedLabels, LabelScorer
from .neftune import NoisyEmbeddings
from .one_pass import capture_encoder, decoding_model, label_token_losses, reusable, reusable_cross_attention
from .sampling import EpochSeededLengthGroupedSampler, SeededSampling  # noqa: F401  (re-exported)

UserMetrics = Callable[[GeneratedLabels], dict]


class GenerationAccuracyTrainer(ArtifactCheckpoints, SeededSampling, Seq2SeqTrainer):
    """A ``Seq2SeqTrainer`` whose metric is the accuracy of generated label words.

    Args:
        label_words: the word for each class id, as in the training targets.
        processing_class: the tokenizer (needed to decode generations).
        artifact_format: how the cell writes, checks and reads its trainable weights in checkpoints, ``save_model``
            and ``--load_best_model_at_end`` (``get_method(name).artifact_format(implementation)``); ``None``: the
            format of the model's kind (a peft adapter, a scratch delta, an AdapterHub adapter, or the whole model).
        compute_metrics: a user's metrics, called once per evaluation with a
            :class:`~hf_peft_suite.metrics.GeneratedLabels` (Trainer's ``EvalPrediction`` holding the generated and
            the reference token ids, plus the decoded texts and class ids) and returning a dict of numbers. They are
            added to accuracy, macro-F1, invalid rate and loss (Trainer prefixes them with ``eval_``), never in their
            place; a name among those is refused.
        Everything else as for ``Seq2SeqTrainer``; ``args.predict_with_generate`` must be true.
    """

    OWN_METRICS = ("loss", "accuracy", "macro_f1", "invalid_rate", "num_scored")

    def __init__(
        self,
        *args,
        label_words: list[str],
        processing_class=None,
        artifact_format: ArtifactFormat | None = None,
        compute_metrics: UserMetrics | None = None,
        **kwargs,
    ):
        if processing_class is None:
            raise ValueError("GenerationAccuracyTrainer needs processing_class=<the tokenizer> to decode generations")
        self.scorer = LabelScorer(processing_class, label_words)
        self.user_metrics = compute_metrics
        self._expected_eval_examples: int | None = None
        self._recording_step: int | None = None
        self.last_eval_class_ids: dict[str, list[int]] | None = None
        self.eval_class_ids: dict[int, dict[str, list[int]]] = {}
        super().__init__(*args, processing_class=processing_class, compute_metrics=self._score, **kwargs)
        self.artifact_format = artifact_format or artifact_format_of(self.model)
        # Every cell averages the loss per batch, as T5's own forward does on transformers 4.57. On 5.x Trainer would
        # pass num_items_in_batch to models whose forward takes **kwargs (peft wrappers, AdapterHub's T5), and the
        # cells would normalise the loss differently under gradient accumulation.
        self.model_accepts_loss_kwargs = False
        if not self.args.predict_with_generate:
            raise ValueError("GenerationAccuracyTrainer scores generated words: set predict_with_generate=True")
        if self.args.gradient_checkpointing:  # 5.x: mirrors --activation_checkpointing
            self.model.enable_input_require_grads()  # see the module docstring
        if self.neftune_noise_alpha is not None:  # Trainer's train() applies it when set; the callback does instead
            self.add_callback(NoisyEmbeddings(self.neftune_noise_alpha))
            self.neftune_noise_alpha = None

    @property
    def max_new_tokens(self) -> int:
        return self.scorer.max_new_tokens

    # ---------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval", **gen_kwargs):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        with self._scoring(dataset, gen_kwargs, record_step=True):
            return super().evaluate(dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix, **gen_kwargs)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test", **gen_kwargs):
        """Trainer's ``predict``, scored as :meth:`evaluate` scores (nothing is logged)."""
        with self._scoring(test_dataset, gen_kwargs, record_step=False):
            return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix,
                                   **gen_kwargs)

    @contextlib.contextmanager
    def _scoring(self, dataset, gen_kwargs: dict, record_step: bool):
        """Generate as many new tokens as the longest label word needs (unless told otherwise), and remember how many
        examples the dataset has, so the padded repeats of distributed evaluation can be dropped."""
        if isinstance(dataset, dict):
            raise ValueError("evaluate one dataset at a time")
        if "max_length" not in gen_kwargs and self.args.generation_max_length is None:
            gen_kwargs.setdefault("max_new_tokens", self.max_new_tokens)
        self._expected_eval_examples = len(dataset)
        self._recording_step = self.state.global_step if record_step else None
        try:
            yield
        finally:
            self._expected_eval_examples = self._recording_step = None

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        """Generate, and take the loss from the encoder output generation computed (one encoder pass).

        Returns ``(None, (generated ids, per-example label-token loss sums and counts), labels)``: the loss travels
        with the predictions, so the padded repeats of distributed evaluation are dropped from it as from them
        (:meth:`_score`). Falls back to ``Seq2SeqTrainer``'s two passes where the encoder output cannot be reused
        (peft prefix tuning, FSDP or DeepSpeed-sharded models); the loss is the plain cross-entropy there too.
        """
        if (prediction_loss_only or self.is_fsdp_enabled or self.is_deepspeed_enabled or "labels" not in inputs
                or not reusable(model)):
            with self._plain_cross_entropy():
                return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys,
                                               **gen_kwargs)
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

    @contextlib.contextmanager
    def _plain_cross_entropy(self):
        """``Seq2SeqTrainer.prediction_step`` without the label smoother, so ``eval_loss`` is the model's own loss."""
        smoother, self.label_smoother = self.label_smoother, None
        try:
            yield
        finally:
            self.label_smoother = smoother

    def _score(self, eval_prediction) -> dict[str, float]:
        """Trainer's ``compute_metrics``: accuracy, macro-F1, invalid rate, count and loss, plus the user's metrics."""
        predictions, label_ids = eval_prediction.predictions, eval_prediction.label_ids
        inputs = eval_prediction.inputs
        loss_sums = None
        if isinstance(predictions, tuple):
            predictions, loss_sums = predictions[0], (predictions[1] if len(predictions) > 1 else None)
        expected = self._expected_eval_examples
        if expected is not None and len(predictions) > expected:
            # Distributed padding: repeated examples fill the last batches and come last after the gather.
            predictions, label_ids = predictions[:expected], label_ids[:expected]
            loss_sums = loss_sums[:expected] if loss_sums is not None else None
            inputs = inputs[:expected] if inputs is not None else None
        predicted, references = self.scorer.class_ids(predictions, label_ids)
        self.last_eval_class_ids = {"predictions": predicted, "references": references}
        if self._recording_step is not None:
            self.eval_class_ids[self._recording_step] = self.last_eval_class_ids
        metrics = self.scorer.score_ids(predicted, references)
        if loss_sums is not None:  # one encoder pass: the loss came with the predictions (see prediction_step)
            metrics = {"loss": float(loss_sums[:, 0].sum() / max(loss_sums[:, 1].sum(), 1.0)), **metrics}
        if self.user_metrics is not None:
            metrics.update(self._user_metrics(predictions, label_ids, inputs, predicted, references))
        return metrics

    def _user_metrics(self, predictions, label_ids, inputs, predicted, references) -> dict:
        # The same arrays from every prediction step: Seq2SeqTrainer's own pads the generations and the labels with the
        # pad token to the generation config's max_length (20 on transformers 5.x, whatever --generation_max_length
        # says); the one-pass step pads neither, and Trainer pads labels across batches with -100.
        pad = self.processing_class.pad_token_id
        generated = np.where(np.asarray(predictions) < 0, pad, predictions)
        generated = generated[:, : _used_columns(generated != pad, minimum=1)]
        labels = np.where(np.asarray(label_ids) == pad, -100, label_ids)
        labels = labels[:, : _used_columns(labels != -100)]
        added = self.user_metrics(GeneratedLabels(
            predictions=generated, label_ids=labels, inputs=inputs, texts=self.scorer.decode(generated),
            predicted_class_ids=np.asarray(predicted), reference_class_ids=np.asarray(references),
            label_words=self.scorer.label_words,
        ))
        if not isinstance(added, dict):
            raise UsageError(f"compute_metrics must return a dict of metric names to numbers, not "
                             f"{type(added).__name__}")
        taken = sorted(name for name in added if name.removeprefix("eval_") in self.OWN_METRICS)
        if taken:
            raise UsageError(
                f"compute_metrics returned {', '.join(taken)}, which GenerationAccuracyTrainer computes itself; "
                f"its metrics are added to those, so give yours other names"
            )
        return added

    # -------------------------------------------------------------------------------------------------- training
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Trainer's loss, but where its label smoother (or ``compute_loss_func``) takes ``labels`` away from the
        model's inputs, the model gets the decoder inputs the labels imply (see the module docstring). The smoothed
        loss is computed here, as Trainer computes it for an encoder-decoder (labels not shifted), averaged over the
        batch's label tokens as every cell's loss is: Trainer's own code reads the model's class name through peft's
        wrapper in a way that fails for peft's prompt-learning models."""
        takes_labels = self.label_smoother is not None or getattr(self, "compute_loss_func", None) is not None
        if not takes_labels or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if "decoder_input_ids" not in inputs:
            shift = self.accelerator.unwrap_model(model).prepare_decoder_input_ids_from_labels
            inputs = {**inputs, "decoder_input_ids": shift(labels=inputs["labels"])}
        if self.label_smoother is None:  # the user's compute_loss_func: Trainer calls it
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
        loss = self.label_smoother(outputs, inputs["labels"])
        return (loss, outputs) if return_outputs else loss


def _used_columns(used: np.ndarray, minimum: int = 0) -> int:
    """How many leading columns hold something (``used``: a boolean array, examples by columns)."""
    columns = np.flatnonzero(used.any(axis=0))
    return max(int(columns[-1]) + 1 if len(columns) else 0, minimum)
