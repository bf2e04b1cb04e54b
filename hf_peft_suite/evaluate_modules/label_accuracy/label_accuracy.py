"""Label accuracy: accuracy, macro-F1 and invalid-output rate of generated label words, as class ids.

An ``evaluate`` metric module shipped inside hf_peft_suite and loaded by path, so it works offline
(``evaluate.load("accuracy")`` downloads its script from the Hub). Predictions are class ids, with -1 for a
generated text that is no label word; such an output counts as wrong for accuracy and as a miss of its true class
for F1. See README.md beside this file (the metric card).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Accuracy, macro-averaged F1 and the share of invalid outputs (-1) for classification by generation."""
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids; -1 where the generated text was no label word.
    references (list of int): true class ids, 0 .. num_labels - 1.
    num_labels (int): number of classes; macro-F1 averages over all of them.
Returns:
    accuracy (float), macro_f1 (float), invalid_rate (float), num_scored (int).
Examples:
    >>> metric = evaluate.load("path/to/label_accuracy")
    >>> metric.compute(predictions=[1, 0, -1], references=[1, 1, 0], num_labels=2)
    {'accuracy': 0.3333333333333333, 'macro_f1': 0.3333333333333333, 'invalid_rate': 0.3333333333333333, 'num_scored': 3}
"""
_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LabelAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_labels):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if len(predictions) == 0:
            raise ValueError("no predictions to score")
        f1_per_class = []
        for label in range(num_labels):
            true_positive = np.sum((predictions == label) & (references == label))
            false_positive = np.sum((predictions == label) & (references != label))
            false_negative = np.sum((predictions != label) & (references == label))
            denominator = 2 * true_positive + false_positive + false_negative
            f1_per_class.append(2 * true_positive / denominator if denominator else 0.0)
        return {
            "accuracy": float(np.mean(predictions == references)),
            "macro_f1": float(np.mean(f1_per_class)),
            "invalid_rate": float(np.mean(predictions == -1)),
            "num_scored": int(len(predictions)),
        }
