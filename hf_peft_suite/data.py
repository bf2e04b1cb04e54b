"""Data: load a classification dataset, clean it, turn labels into words, tokenize.

Sentiment classification becomes text-to-text: the encoder reads the review, the decoder writes the label word
(``negative`` / ``positive`` for IMDB). Everything a user can get wrong (a missing column, a label with no word, an
empty text or split, an unreachable Hub dataset) is a :class:`UsageError` raised here, before any training.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arguments import DataArguments
from .errors import UsageError, warn
from .tiny import TINY_DATASET_NAME, build_tiny_dataset
from .weights import first_line

# ClassLabel names -> the words the model writes. Names not listed are used as they are.
VERBALIZER = {"neg": "negative", "pos": "positive"}
FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def clean_review(text: str) -> str:
    """The reference notebook's cleaning: HTML line breaks become spaces, then everything is lowercased."""
    return text.replace("<br />", " ").lower()


@dataclass
class PreparedData:
    """Tokenized splits (columns ``input_ids``, ``attention_mask``, ``labels``) and the label words."""

    train_dataset: object
    eval_dataset: object
    label_words: list[str]


# ------------------------------------------------------------------------------------------------------ loading
def load_raw_dataset(args: DataArguments, evaluation_only: bool = False):
    """A ``DatasetDict`` from the built-in tiny data, local files or folder, or the Hub.

    ``evaluation_only``: only the evaluation split is needed (``--eval_file`` alone is enough).
    """
    from datasets import load_dataset

    if args.dataset_name == TINY_DATASET_NAME and not (args.train_file or args.eval_file):
        return build_tiny_dataset()
    if args.train_file or args.eval_file:
        files = {args.eval_split: args.eval_file} if evaluation_only else {
            args.train_split: args.train_file, args.eval_split: args.eval_file}
        if None in files.values():
            raise UsageError("give both --train_file and --eval_file (or neither, and --dataset_name)"
                             if not evaluation_only else "give --eval_file (or --dataset_name)")
        for path in files.values():
            if not os.path.isfile(path):
                raise UsageError(f"data file {path} does not exist")
        builder = _file_builder(next(iter(files.values())))
        return _load(lambda: load_dataset(builder, data_files=files), f"the files {', '.join(files.values())}")
    path = Path(args.dataset_name)
    if path.is_dir():
        return _load(lambda: load_dataset(str(path), args.dataset_config_name), f"the folder {path}")
    if path.is_file():
        builder = _file_builder(str(path))
        split = args.eval_split if evaluation_only else args.train_split
        return _load(lambda: load_dataset(builder, data_files={split: str(path)}), f"the file {path}")
    if args.dataset_name.startswith((".", "/", "~")) or os.sep + os.sep in args.dataset_name:
        raise UsageError(f"dataset path {args.dataset_name} does not exist; give an existing folder or file")
    try:
        return load_dataset(args.dataset_name, args.dataset_config_name)
    except _dataset_errors() as error:
        error = _root_cause(error)
        raise UsageError(
            f"cannot load the dataset {args.dataset_name!r} from the Hugging Face Hub ({type(error).__name__}: "
            f"{first_line(error)}). Without network access, run `--preset tiny` (built in, offline), or point "
            f"--dataset_name at a local copy (a folder in Hub layout, or csv/jsonl/parquet files named by split)"
        ) from None


def read_text_file(path: str | os.PathLike, text_column: str) -> list[str]:
    """The texts of one csv/jsonl/parquet file's ``text_column``, in file order (empty texts refused)."""
    from datasets import load_dataset

    path = str(path)
    if not os.path.isfile(path):
        raise UsageError(f"input file {path} does not exist")
    dataset = _load(lambda: load_dataset(_file_builder(path), data_files={"input": path})["input"], f"the file {path}")
    if text_column not in dataset.column_names:
        raise UsageError(f"{path} has no column {text_column!r} (columns: {dataset.column_names}); name it with "
                         f"--text_column")
    texts = dataset[text_column]
    _check_texts(texts, path, text_column)
    return texts


def _file_builder(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FILE_BUILDERS:
        raise UsageError(f"cannot read {path}: use a .csv, .json, .jsonl or .parquet file")
    return FILE_BUILDERS[suffix]


def _dataset_errors() -> tuple[type[BaseException], ...]:
    """What ``load_dataset`` raises for data it cannot reach or read: ``OSError`` (missing, offline), ``ValueError``
    (bad CSV or JSON, not UTF-8, no data files), ``KeyError``, Arrow's errors, and datasets' generation error."""
    import pyarrow
    from datasets.exceptions import DatasetGenerationError

    return (OSError, ValueError, KeyError, pyarrow.ArrowException, DatasetGenerationError)


def _root_cause(error: BaseException) -> BaseException:
    """The exception at the bottom of a chain: datasets wraps the real problem in a DatasetGenerationError."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    return error


def _load(load, what: str):
    try:
        return load()
    except _dataset_errors() as error:
        cause = _root_cause(error)
        if isinstance(cause, UnicodeDecodeError) or "invalid utf8" in str(cause).lower():
            raise UsageError(f"cannot read {what}: it is not UTF-8 text ({first_line(cause)}); save it as UTF-8 (in a "
                             f"spreadsheet: 'CSV UTF-8')") from None
        raise UsageError(f"cannot read {what} as a dataset ({type(cause).__name__}: {first_line(cause)})") from None



# ------------------------------------------------------------------------------------------------------ labels
def resolve_label_words(train, evaluation, args: DataArguments) -> tuple[list[str], dict]:
    """The word for each class, and a map from the raw label value to its class id.

    ClassLabel columns use their names through :data:`VERBALIZER` (or ``--label_words``, in class-id order);
    string columns use the strings themselves (sorted), or ``--label_words`` as the list of allowed labels;
    integer columns need ``--label_words``.
    """
    from datasets import ClassLabel

    feature = train.features[args.label_column]
    given = list(args.label_words) if args.label_words else None
    if isinstance(feature, ClassLabel):
        words = given or [VERBALIZER.get(name, name) for name in feature.names]
        if len(words) != feature.num_classes:
            raise UsageError(
                f"--label_words gives {len(words)} words but the label column {args.label_column!r} has "
                f"{feature.num_classes} classes {feature.names}; give one word per class, in class-id order"
            )
        value_to_id = {index: index for index in range(feature.num_classes)}
    else:
        values = sorted(set(train[args.label_column]) | set(evaluation[args.label_column]), key=str)
        if any(value is None for value in values):
            raise UsageError(f"the label column {args.label_column!r} has empty labels; fill or drop those rows")
        if all(isinstance(value, str) for value in values):
            words = given or values
            value_to_id = {word: index for index, word in enumerate(words)}
        elif given:
            value_to_id = {index: index for index in range(len(given))}
            words = given
        else:
            raise UsageError(
                f"the label column {args.label_column!r} holds numbers {values[:5]} without names; give the word for "
                f"each class with --label_words (in class-id order), e.g. --label_words negative positive"
            )
        outside = [value for value in values if value not in value_to_id]
        if outside:
            raise UsageError(
                f"labels {outside[:5]} in column {args.label_column!r} have no label word (label words: {words}); "
                f"add them to --label_words or fix the data"
            )
    _check_words(words)
    return words, value_to_id


def _check_words(words: list[str]) -> None:
    if any(not word.strip() for word in words):
        raise UsageError(f"label words must not be empty: {words}")
    if len(set(words)) != len(words):
        raise UsageError(f"label words must be different from each other: {words}")


def check_words_survive_tokenizer(words: list[str], tokenizer) -> None:
    """Each label word must decode back to itself, or generated text could never match it."""
    for word in words:
        ids = tokenizer(text_target=word).input_ids
        decoded = tokenizer.decode(ids, skip_special_tokens=True).strip()
        if decoded != word:
            raise UsageError(
                f"the label word {word!r} does not survive this tokenizer (it decodes as {decoded!r}), so a generated "
                f"answer could never match it; choose words the tokenizer knows (--label_words)"
            )


# -------------------------------------------------------------------------------------------------- preparation
def _check_split(dataset, name: str, args: DataArguments) -> None:
    for column in (args.text_column, args.label_column):
        if column not in dataset.column_names:
            option = "--text_column" if column == args.text_column else "--label_column"
            raise UsageError(
                f"the {name} split has no column {column!r} (columns: {dataset.column_names}); name the right one "
                f"with {option}"
            )
    if len(dataset) == 0:
        raise UsageError(f"the {name} split is empty; give a dataset with examples in it")


def _subset(dataset, size: int | None, seed: int):
    """A seeded shuffled subset: the Hub's IMDB splits are sorted by label, so the first N rows are one class."""
    if size is None or size >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(size)).flatten_indices()


def _check_texts(texts: list, where: str, column: str) -> None:
    """Every row must hold text: not a number, not empty (row numbers count the rows from 0, in file order)."""
    not_text = [index for index, text in enumerate(texts) if text is not None and not isinstance(text, str)]
    if not_text:
        example = texts[not_text[0]]
        raise UsageError(
            f"{where}'s column {column!r} holds {type(example).__name__} values, not text (row "
            f"{not_text[0]}: {example!r}); name the column of texts with --text_column"
        )
    empty = [index for index, text in enumerate(texts) if text is None or not text.strip()]
    if empty:
        raise UsageError(
            f"{len(empty)} rows of {where} have an empty {column!r} (the first is row {empty[0]}, "
            f"counting from 0 in the file's order); remove them or choose another --text_column"
        )


def _warn_about_labels(train, evaluation, args: DataArguments, words: list[str], value_to_id: dict) -> None:
    """Allowed, but likely a mistake: one class to train on, evaluation classes never trained on, tiny inputs."""
    trained = {value_to_id[value] for value in train[args.label_column]}
    evaluated = {value_to_id[value] for value in evaluation[args.label_column]}
    if len(trained) == 1:
        warn(f"the training data holds only the class {words[next(iter(trained))]!r}: the model can learn nothing "
             f"but to write it (check --label_column, or take more --max_train_samples)")
    unseen = sorted(evaluated - trained)
    if unseen:
        warn(f"the evaluation data holds classes never seen in training: {[words[i] for i in unseen]}; the model "
             f"cannot learn to write them")
    if args.max_source_length < 8:
        warn(f"--max_source_length {args.max_source_length} keeps fewer than 8 tokens of each text (T5's inputs end "
             f"with </s>): the model sees almost nothing of the review")


def load_data(args: DataArguments | None = None, tokenizer=None, seed: int = 42, **kwargs) -> PreparedData:
    """Load, check, subset, clean and tokenize the train and eval splits.

    ``args`` is a :class:`DataArguments`; keyword arguments build one (``load_data(dataset_name=..., tokenizer=tok)``).
    The eval split is sorted by input length (longest first) so generation pads little; metrics do not depend on
    the order.
    """
    args = args or DataArguments(**kwargs)
    if tokenizer is None:
        raise UsageError("load_data needs the tokenizer of the model to be trained (tokenizer=...)")
    raw = load_raw_dataset(args)
    train, evaluation = _split(raw, args.train_split, "--train_split", args), _split(raw, args.eval_split,
                                                                                  "--eval_split", args)
    words, value_to_id = resolve_label_words(train, evaluation, args)
    check_words_survive_tokenizer(words, tokenizer)
    _check_texts(train[args.text_column], f"the {args.train_split} split", args.text_column)
    _check_texts(evaluation[args.text_column], f"the {args.eval_split} split", args.text_column)
    train = _subset(train, args.max_train_samples, seed)
    evaluation = _subset(evaluation, args.max_eval_samples, seed)
    _warn_about_labels(train, evaluation, args, words, value_to_id)
    tokenize = _tokenizer_function(args, tokenizer, words, value_to_id)
    return PreparedData(_tokenized(train, tokenize, False), _tokenized(evaluation, tokenize, True), words)


def load_eval_data(args: DataArguments, tokenizer, label_words: list[str], seed: int = 42) -> PreparedData:
    """Only the evaluation split, prepared as :func:`load_data` prepares it, with a trained run's ``label_words``.

    The data's labels must be among ``label_words`` (ClassLabel columns in the run's class order); the returned
    ``train_dataset`` is ``None``.
    """
    args = dataclasses.replace(args, label_words=list(label_words))
    evaluation = _split(load_raw_dataset(args, evaluation_only=True), args.eval_split, "--eval_split", args)
    words, value_to_id = resolve_label_words(evaluation, evaluation, args)
    _check_texts(evaluation[args.text_column], f"the {args.eval_split} split", args.text_column)
    evaluation = _subset(evaluation, args.max_eval_samples, seed)
    return PreparedData(None, _tokenized(evaluation, _tokenizer_function(args, tokenizer, words, value_to_id), True),
                        words)


def _split(raw, name: str, option: str, args: DataArguments):
    if name not in raw:
        raise UsageError(f"the dataset has no split {name!r} (splits: {list(raw)}); choose one with {option}")
    _check_split(raw[name], name, args)
    return raw[name]


def prepare_texts(texts: list, args: DataArguments) -> list:
    """The run's own cleaning (the reference notebook's, unless --no_clean_text)."""
    return [clean_review(text) if args.clean_text else text for text in texts]


def _tokenizer_function(args: DataArguments, tokenizer, words: list[str], value_to_id: dict):
    def tokenize(batch):
        targets = [words[value_to_id[value]] for value in batch[args.label_column]]
        encoded = tokenizer(prepare_texts(batch[args.text_column], args), max_length=args.max_source_length,
                            truncation=True)
        encoded["labels"] = tokenizer(text_target=targets).input_ids
        return encoded

    return tokenize


def _tokenized(dataset, tokenize, sort_by_length: bool):
    """``dataset`` tokenized (only model inputs and labels left), longest first when ``sort_by_length``."""
    dataset = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, desc="Tokenizing")
    if sort_by_length:
        lengths = np.array([len(ids) for ids in dataset["input_ids"]])
        dataset = dataset.select(np.argsort(-lengths, kind="stable")).flatten_indices()
    return dataset
