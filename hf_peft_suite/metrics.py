"""From generated token ids to label ids to accuracy, macro-F1 and invalid-output rate.

The numbers come from the ``evaluate`` module shipped in ``evaluate_modules/label_accuracy`` (loaded by path, so it
works offline); this file turns generations into the class ids that module scores, and defines what a user's
``compute_metrics`` receives (:class:`GeneratedLabels`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import EvalPrediction

LABEL_METRIC_PATH = str(Path(__file__).parent / "evaluate_modules" / "label_accuracy")
INVALID = -1


def load_label_metric():
    """The shipped ``evaluate`` metric, in memory (no cache files, so parallel processes never collide)."""
    import evaluate

    return evaluate.load(LABEL_METRIC_PATH, keep_in_memory=True)


class LabelScorer:
    """Decodes generated and reference token ids, maps each text to its class id, and scores them.

    ``max_new_tokens`` is the length of the longest tokenized label word (with ``</s>``): generation needs no more.
    """

    def __init__(self, tokenizer, label_words: list[str]):
        self.tokenizer = tokenizer
        self.label_words = list(label_words)
        self.word_to_id = {word: index for index, word in enumerate(self.label_words)}
        self.max_new_tokens = max(len(tokenizer(text_target=word).input_ids) for word in self.label_words)
        self._metric = None

    def decode(self, token_ids) -> list[str]:
        """Texts of a batch of token ids; -100 (Trainer's padding of labels and predictions) counts as padding."""
        token_ids = np.asarray(token_ids)
        token_ids = np.where(token_ids < 0, self.tokenizer.pad_token_id, token_ids)
        return self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)

    def texts_to_ids(self, texts: list[str]) -> list[int]:
        """The class id of each text, or -1 when it is no label word (compared after stripping white space)."""
        return [self.word_to_id.get(text.strip(), INVALID) for text in texts]

    def class_ids(self, generated_ids, label_ids) -> tuple[list[int], list[int]]:
        """(predicted, reference) class ids of a batch of generated and reference token ids (-1: no label word)."""
        predictions = self.texts_to_ids(self.decode(generated_ids))
        references = self.texts_to_ids(self.decode(label_ids))
        if INVALID in references:
            raise ValueError("a reference is not one of the label words: labels and label_words disagree")
        return predictions, references

    def score_ids(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        """Accuracy, macro-F1, invalid rate and count of predicted against reference class ids."""
        if self._metric is None:
            self._metric = load_label_metric()
        return self._metric.compute(predictions=predictions, references=references, num_labels=len(self.label_words))


class GeneratedLabels(EvalPrediction):
    """What a user's ``compute_metrics`` receives, once per evaluation: Trainer's ``EvalPrediction`` as
    ``Seq2SeqTrainer`` gives it under ``predict_with_generate``, plus what the scorer made of it. One row per
    evaluation example (each once, also under several processes), in the order of the evaluation set.

    Attributes:
        predictions: the generated token ids (``np.ndarray``, ``(examples, tokens)``: as long as the longest
            generation, the decoder's start token first, padded with the pad token).
        label_ids: the reference token ids (as long as the longest, padded with -100).
        inputs: the input ids when ``--include_for_metrics inputs`` is given, else ``None``.
        texts: the generated texts, decoded without special tokens.
        predicted_class_ids: the class id of each generated text (-1: no label word).
        reference_class_ids: the class id of each reference.
        label_words: the word of each class id.

    ``predictions, label_ids = eval_prediction`` unpacks it as an ``EvalPrediction``, so a function written for
    ``Seq2SeqTrainer`` works unchanged.
    """

    def __init__(self, predictions, label_ids, inputs=None, *, texts: list[str], predicted_class_ids: np.ndarray,
                 reference_class_ids: np.ndarray, label_words: list[str]):
        super().__init__(predictions=predictions, label_ids=label_ids, inputs=inputs)
        self.texts, self.label_words = texts, list(label_words)
        self.predicted_class_ids, self.reference_class_ids = predicted_class_ids, reference_class_ids
