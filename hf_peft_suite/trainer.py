"""``GenerationAccuracyTrainer``: a ``Seq2SeqTrainer`` scored on the label words the model *generates*.

Every cell of the comparison (full fine-tuning, prompt tuning, adapters, LoRA; scratch and library) is trained and
evaluated by this one class, so all are measured the same way:

- evaluation runs ``generate`` with ``max_new_tokens`` = the longest tokenized label word (2 for ``positive</s>``),
  decodes, maps each text to its class (anything else is invalid) and reports accuracy, macro-F1, invalid rate;
- it is exact under distributed evaluation: ``Seq2SeqTrainer.evaluate`` gathers with ``accelerator.gather``, so when
  N examples do not divide evenly across processes and batches, the last batches are padded with repeated examples.
  Those come last in the gathered arrays and are dropped, so each of the N examples is scored exactly once
  (``eval_num_scored`` == N).
"""

from __future__ import annotations

from transformers import Seq2SeqTrainer

from .metrics import LabelScorer


class GenerationAccuracyTrainer(Seq2SeqTrainer):
    """A ``Seq2SeqTrainer`` whose metric is the accuracy of generated label words.

    Args:
        label_words: the word for each class id, as in the training targets.
        processing_class: the tokenizer (needed to decode generations).
        Everything else as for ``Seq2SeqTrainer``; ``args.predict_with_generate`` must be true.
    """

    def __init__(self, *args, label_words: list[str], processing_class=None, **kwargs):
        if processing_class is None:
            raise ValueError("GenerationAccuracyTrainer needs processing_class=<the tokenizer> to decode generations")
        self.scorer = LabelScorer(processing_class, label_words)
        self._expected_eval_examples: int | None = None
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

    def _compute_metrics(self, eval_prediction) -> dict[str, float]:
        predictions, label_ids = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        expected = self._expected_eval_examples
        if expected is not None and len(predictions) > expected:
            # Distributed padding: repeated examples fill the last batches and come last after the gather.
            predictions, label_ids = predictions[:expected], label_ids[:expected]
        return self.scorer.score(predictions, label_ids)
