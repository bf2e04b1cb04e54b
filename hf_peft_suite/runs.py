"""A finished run, used again: load it as a classifier, label new texts, evaluate it on its own or other data.

::

    import hf_peft_suite

    run = hf_peft_suite.load_run("outputs/lora")            # the run's model/ (and base_model/), tokenizer, settings
    for prediction in run.predict(["A wonderful, moving film.", "Dull and far too long."]):
        print(prediction.label, prediction.output)          # "positive" / "negative", or None and the raw output
    metrics = hf_peft_suite.evaluate_run("outputs/lora", output_dir="outputs/lora-eval")   # its own evaluation data

The command line does the same: ``hf-peft-suite evaluate RUN_DIR`` and ``hf-peft-suite predict RUN_DIR TEXT ...``
(:mod:`hf_peft_suite.cli`). Texts are cleaned, put into the run's input template (its ``--source_prefix`` or
``--input_template``) and truncated as the run's training data was; a run whose template names several columns takes
each example as a dict of them (``run.predict([{"sentence1": ..., "sentence2": ...}])``). Generation writes at most
as many tokens as the longest label word needs, and any output that is no label word counts as invalid. Runs written
before templates and label maps existed have neither in their results.json and read their ``text_column`` alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .arguments import DataArguments, TrainingArguments
from .compat import start_command
from .data import encode_inputs, input_template, load_eval_data
from .errors import UsageError
from .files import ARTIFACT_FOLDER, BASE_FOLDER, PREDICTIONS_NAME, RESULTS_NAME
from .metrics import LabelScorer
from .task import InputTemplate
from .weights import first_line

EVAL_RESULTS_NAME = "eval_results.json"
PREDICTIONS_FILE_NAME = "predictions.jsonl"
SUMMARY_NAME = "summary.json"


@dataclass
class Prediction:
    """What the model wrote for one example: the label word (``None`` when the output is no label word) and the output.

    ``text`` is the example as given: a text, or a dict of the columns of the run's input template."""

    text: str | dict[str, str]
    label: str | None
    output: str

    @property
    def valid(self) -> bool:
        return self.label is not None


class FinishedRun:
    """A trained cell loaded back from its ``output_dir``: ``model``, ``tokenizer``, ``results`` (its results.json)."""

    def __init__(self, output_dir: Path, results: dict, model, tokenizer):
        self.output_dir, self.results, self.model, self.tokenizer = output_dir, results, model, tokenizer
        self.label_words: list[str] = list(results["label_words"])
        self.data_arguments = DataArguments(**results["config"]["data"])
        self.input_template = input_template(self.data_arguments)
        self.scorer = LabelScorer(tokenizer, self.label_words)

    @property
    def method(self) -> str:
        return self.results["method"]

    @property
    def implementation(self) -> str:
        return self.results["implementation"]

    @torch.no_grad()
    def predict(self, texts: list[str] | list[dict[str, str]], batch_size: int = 32) -> list[Prediction]:
        """The label word generated for each example (cleaned, put into the run's input template and truncated as in
        training), in order. An example is a text, or a dict of the template's columns (needed where it has several).
        """
        from transformers import DataCollatorWithPadding

        if isinstance(texts, (str, dict)):
            texts = [texts]
        rows = self._rows(list(texts))
        pad = DataCollatorWithPadding(self.tokenizer, return_tensors="pt")
        predictions = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start:start + batch_size])
            columns = {column: values[start:start + batch_size] for column, values in rows.items()}
            encoded = encode_inputs(columns, self.data_arguments, self.tokenizer, self.input_template)
            inputs = pad([{"input_ids": ids, "attention_mask": mask}
                          for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])])
            inputs = {key: value.to(self.device) for key, value in inputs.items()}
            generated = self.model.generate(**inputs, max_new_tokens=self.scorer.max_new_tokens)
            outputs = [text.strip() for text in self.scorer.decode(generated.cpu())]
            predictions += [Prediction(text, output if output in self.label_words else None, output)
                            for text, output in zip(batch, outputs)]
        return predictions

    def _rows(self, examples: list) -> dict[str, list[str]]:
        """The template's columns of ``examples`` (texts, or dicts of columns), column by column."""
        columns = self.input_template.columns
        if all(isinstance(example, str) for example in examples) and len(columns) == 1:
            return {columns[0]: examples}
        if not all(isinstance(example, dict) for example in examples):
            raise UsageError(
                f"this run reads {len(columns)} columns through its input template {self.input_template.text!r}: give "
                f"each example as a dict of {', '.join(columns)} (from the command line: predict RUN_DIR --input_file "
                f"FILE, a csv/jsonl/parquet file with those columns)" if len(columns) > 1 else
                f"give each example as a text, or as a dict holding its {columns[0]!r}"
            )
        missing = sorted({column for example in examples for column in columns if column not in example})
        if missing:
            raise UsageError(f"examples lack {', '.join(map(repr, missing))}: this run's input template "
                             f"{self.input_template.text!r} needs each of {', '.join(columns)}")
        return {column: [example[column] for example in examples] for column in columns}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def read_run_results(output_dir: str | os.PathLike) -> dict:
    """The ``results.json`` of a finished run; a :class:`UsageError` when ``output_dir`` holds none."""
    output_dir = Path(output_dir)
    path, artifact = output_dir / RESULTS_NAME, output_dir / ARTIFACT_FOLDER
    if not path.is_file() or not artifact.is_dir():
        raise UsageError(
            f"{output_dir} holds no finished run (it needs {RESULTS_NAME} and {ARTIFACT_FOLDER}/); give the "
            f"--output_dir of a run that finished training"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is damaged ({first_line(error)}); it is not the JSON a run writes") from None


def load_run(output_dir: str | os.PathLike, device: str | None = None) -> FinishedRun:
    """Load a finished run's trained model and tokenizer (see the module docstring), in evaluation mode."""
    from transformers import AutoTokenizer

    from .methods import get_method
    from .modeling import load_base_model, loading_errors
    from .quiet import library_output

    start_command(needed_for=("loading",))
    output_dir = Path(output_dir)
    results = read_run_results(output_dir)
    artifact_dir, base_dir = output_dir / ARTIFACT_FOLDER, output_dir / BASE_FOLDER
    artifact_format = get_method(results["method"]).artifact_format(results["implementation"])

    def base():
        if base_dir.is_dir():
            return load_base_model(str(base_dir))
        return load_base_model(results["model_name_or_path"])

    try:
        with library_output():  # no "Loading weights" bar or load warnings (transformers 5), as in a run
            model = artifact_format.load_trained(str(artifact_dir), base)
            tokenizer = AutoTokenizer.from_pretrained(str(artifact_dir))
    except loading_errors() as error:
        raise UsageError(
            f"cannot load the trained model of {output_dir} ({type(error).__name__}: {first_line(error)}); the run's "
            f"{ARTIFACT_FOLDER}/ must be as training wrote it"
        ) from None
    model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return FinishedRun(output_dir, results, model, tokenizer)


def check_new_folder(output_dir: Path, contents: str) -> None:
    """Refuse an ``--output_dir`` that already holds files: nothing the user saved is overwritten."""
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise UsageError(f"--output_dir {output_dir} is not empty; give a new folder for {contents}")


def evaluate_run(run_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None,
                 per_device_eval_batch_size: int | None = None, bf16: bool = False, **data_overrides) -> dict:
    """Evaluate a finished run, by default on its own evaluation data and settings (from its results.json).

    ``data_overrides`` are :class:`DataArguments` fields (``dataset_name``, ``eval_file``, ``text_column``,
    ``label_column``, ``label_words``, ``input_template``, ``max_eval_samples``, ...): the run's input template and
    label map apply unless they are given (``text_column`` renames the one column of a one-column template). With ``output_dir``, ``eval_results.json`` and
    ``eval_predictions.json`` are written there (by process 0 under ``torchrun`` / ``accelerate launch``).
    Returns the metrics: ``eval_accuracy``, ``eval_macro_f1``, ``eval_invalid_rate``, ``eval_num_scored``,
    ``eval_loss``, ``eval_runtime``, ``eval_samples_per_second``.
    """
    from transformers import DataCollatorForSeq2Seq
    from transformers.trainer_callback import PrinterCallback

    from .launch import check_launch
    from .run_folder import write_predictions
    from .trainer import GenerationAccuracyTrainer

    start_command()
    run_results = read_run_results(run_dir)
    config = run_results["config"]
    data_arguments = DataArguments(**_data_settings(config["data"], data_overrides))
    batch_size = per_device_eval_batch_size or config["training"]["per_device_eval_batch_size"]
    output_dir = Path(output_dir) if output_dir is not None else None
    if output_dir is not None:
        check_new_folder(output_dir, "the evaluation's files")
    args = TrainingArguments(output_dir=str(output_dir or Path(run_dir) / "evaluation"), bf16=bf16,
                             per_device_eval_batch_size=batch_size, use_cpu=not torch.cuda.is_available(),
                             report_to="none", disable_tqdm=True)
    check_launch(args)
    run = load_run(run_dir, device=str(args.device))
    data_seed = config["training"].get("data_seed")
    seed = data_seed if data_seed is not None else config["training"]["seed"]
    with args.main_process_first(desc="loading the data"):  # as a run does: read, tokenized once, then from cache
        data = load_eval_data(data_arguments, run.tokenizer, run.label_words, seed=seed)
    trainer = GenerationAccuracyTrainer(
        model=run.model, args=args, eval_dataset=data.eval_dataset, processing_class=run.tokenizer,
        data_collator=DataCollatorForSeq2Seq(run.tokenizer, label_pad_token_id=-100), label_words=run.label_words,
    )
    trainer.remove_callback(PrinterCallback)  # its raw log dict; the metrics are returned (the command prints JSON)
    metrics = trainer.evaluate()
    if output_dir is not None and trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        record = {"run": str(run_dir), "method": run.method, "implementation": run.implementation,
                  "data": data_arguments.__dict__, "num_eval_examples": len(data.eval_dataset),
                  "world_size": args.world_size, **metrics}
        (output_dir / EVAL_RESULTS_NAME).write_text(json.dumps(record, indent=2, default=str) + "\n")
        write_predictions(output_dir / PREDICTIONS_NAME, run.label_words, trainer.last_eval_class_ids)
    return metrics


def _data_settings(saved: dict, overrides: dict) -> dict:
    """A run's data settings with ``overrides`` on top; ``text_column`` renames the column of a one-column template."""
    settings = {**saved, **overrides}
    if "text_column" in overrides and saved.get("input_template") and "input_template" not in overrides:
        template = InputTemplate.parse(saved["input_template"])
        settings["input_template"] = _reading(template, overrides["text_column"]).text
    return settings


def _reading(template: InputTemplate, column: str) -> InputTemplate:
    """``template`` reading ``column`` in place of its one column (a template of several columns is refused)."""
    if len(template.columns) > 1:
        raise UsageError(
            f"this run reads {len(template.columns)} columns through its input template {template.text!r}, not one "
            f"--text_column; give the data those columns, or --input_template naming this data's columns"
        )
    return template.for_column(column)


def predict_file(run_dir: str | os.PathLike, input_file: str | os.PathLike, output_dir: str | os.PathLike,
                 text_column: str | None = None, batch_size: int = 32) -> dict:
    """Label every row of a csv/jsonl/parquet file: ``output_dir/predictions.jsonl`` (one line per row, in order:
    ``index``, ``text`` (the text, or a dict of the run's template columns), ``label`` or ``null``, ``output``) and
    ``output_dir/summary.json``, which is returned. The file holds the columns the run's input template names
    (``text_column`` renames the column of a one-column template)."""
    import time

    from .data import read_input_file

    output_dir = Path(output_dir)
    check_new_folder(output_dir, "the predictions")
    run = load_run(run_dir)
    template = run.input_template if text_column is None else _reading(run.input_template, text_column)
    columns = read_input_file(input_file, template)
    if len(template.columns) == 1:
        examples, column = columns[template.columns[0]], template.columns[0]
    else:
        examples, column = [dict(zip(columns, values)) for values in zip(*columns.values())], None
    started = time.perf_counter()
    predictions = run.predict(examples, batch_size=batch_size)
    seconds = time.perf_counter() - started
    counts = {word: sum(p.label == word for p in predictions) for word in run.label_words}
    summary = {
        "run": str(run_dir), "method": run.method, "implementation": run.implementation,
        "input_file": str(input_file), "text_column": column, "input_template": template.text,
        "num_texts": len(examples),
        "label_counts": counts, "invalid": sum(not p.valid for p in predictions),
        "runtime_s": round(seconds, 3), "texts_per_second": round(len(examples) / seconds, 2) if seconds else None,
        "predictions": str(output_dir / PREDICTIONS_FILE_NAME),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / PREDICTIONS_FILE_NAME).open("w", encoding="utf-8") as file:
        for index, prediction in enumerate(predictions):
            row = {"index": index, "text": prediction.text, "label": prediction.label, "output": prediction.output}
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    (output_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
