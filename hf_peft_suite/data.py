"""Data: load a classification dataset, clean it, turn labels into words, tokenize.

Classification becomes text-to-text: the encoder reads the input (the review for IMDB; for other tasks the columns an
``--input_template`` names, :mod:`hf_peft_suite.task`), the decoder writes the label word (``negative`` / ``positive``
for IMDB; any word through a ``--label_words`` map). Everything a user can get wrong (a missing column, a label with no
word, an empty text or split, an unlabelled split, an unreachable Hub dataset) is a :class:`UsageError` raised here,
before any training.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arguments import DataArguments
from .errors import UsageError, warn
from .task import InputTemplate, label_map_pairs
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
    """Tokenized splits (columns ``input_ids``, ``attention_mask``, ``labels``), the label words, and how the task was
    read: ``input_template`` (``{text}`` for one column alone) and ``label_map`` (each label value, as a string, to its
    word)."""

    train_dataset: object
    eval_dataset: object
    label_words: list[str]
    input_template: str | None = None
    label_map: dict[str, str] | None = None


def input_template(args: DataArguments) -> InputTemplate:
    """How a row becomes the encoder's text: ``--input_template``, else ``--source_prefix`` + ``{text_column}``, else
    ``{text_column}`` alone (the reference recipe: truncated at the end, as before templates existed)."""
    if args.input_template is not None:
        return InputTemplate.parse(args.input_template)
    return InputTemplate.single(args.text_column, args.source_prefix or "")


def encode_inputs(rows: dict[str, list], args: DataArguments, tokenizer, template: InputTemplate | None = None):
    """``input_ids`` and ``attention_mask`` for a batch of rows (column -> values): each column the template names
    cleaned as the run's data is, the template filled and truncated to ``--max_source_length`` without cutting its
    own words."""
    template = template or input_template(args)
    fields = {column: prepare_texts(rows[column], args) for column in template.columns}
    return template.encode(fields, tokenizer, args.max_source_length)


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
    return read_input_file(path, InputTemplate.single(text_column))[text_column]


def read_input_file(path: str | os.PathLike, template: InputTemplate) -> dict[str, list[str]]:
    """The columns ``template`` names, of one csv/jsonl/parquet file, in file order (empty texts refused)."""
    from datasets import load_dataset

    path = str(path)
    if not os.path.isfile(path):
        raise UsageError(f"input file {path} does not exist")
    dataset = _load(lambda: load_dataset(_file_builder(path), data_files={"input": path})["input"], f"the file {path}")
    one_column = len(template.columns) == 1  # which --text_column can name (a prefix's, or a one-column template's)
    if one_column and template.columns[0] not in dataset.column_names:
        raise UsageError(f"{path} has no column {template.columns[0]!r} (columns: {dataset.column_names}); name it "
                         f"with --text_column")
    template.check_columns(dataset.column_names, path)
    option = "--text_column" if one_column else "--input_template"
    columns = {column: column_values(dataset, column) for column in template.columns}
    for column, texts in columns.items():
        _check_texts(texts, path, column, option)
    return columns


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

    ``--label_words`` as ``VALUE=WORD`` pairs maps each label value to its word: a ClassLabel's name (or its class
    id), the text of any other value (``0``, ``True``, ``Positive``); values that share a word are one class. The
    classes come in the order of the values (ClassLabel ids; other values sorted), each word once; words whose value
    the data does not hold come last, in the order given. ``--label_words`` as words alone: ClassLabel columns get them
    in class-id order, string columns take them as the list of allowed labels, integer columns as the word of each
    class id. Without ``--label_words``: ClassLabel names through :data:`VERBALIZER`, string labels as they are
    (sorted); integer columns need it.
    """
    from datasets import ClassLabel

    feature = train.features[args.label_column]
    pairs = label_map_pairs(args.label_words)
    given = list(args.label_words) if args.label_words else None
    if isinstance(feature, ClassLabel):
        _check_class_ids(train, evaluation, args, feature)
        if pairs is not None:
            classes = {index: (name, str(index)) for index, name in enumerate(feature.names)}
            known = {key for keys in classes.values() for key in keys}
            foreign = [value for value in pairs if value not in known]
            if foreign:
                raise UsageError(
                    f"--label_words maps {', '.join(map(repr, foreign))}, which the label column "
                    f"{args.label_column!r} does not have (its classes: {feature.names}, or their ids 0 to "
                    f"{feature.num_classes - 1})"
                )
            words, value_to_id = _apply_label_map(pairs, classes, args)
        else:
            words = given or [VERBALIZER.get(name, name) for name in feature.names]
            if len(words) != feature.num_classes:
                raise UsageError(
                    f"--label_words gives {len(words)} words but the label column {args.label_column!r} has "
                    f"{feature.num_classes} classes {feature.names}; give one word per class, in class-id order "
                    f"(or NAME=WORD pairs)"
                )
            value_to_id = {index: index for index in range(feature.num_classes)}
    else:
        values = sorted(set(column_values(train, args.label_column)) | set(column_values(evaluation, args.label_column)),
                        key=str)
        if any(value is None for value in values):
            raise UsageError(f"the label column {args.label_column!r} has empty labels; fill or drop those rows")
        if pairs is not None:
            ordered = sorted(values, key=lambda value: (isinstance(value, str), value))
            words, value_to_id = _apply_label_map(pairs, {value: _value_keys(value) for value in ordered}, args)
        elif all(isinstance(value, str) for value in values):
            words = given or values
            value_to_id = {word: index for index, word in enumerate(words)}
        elif given:
            value_to_id = {index: index for index in range(len(given))}
            words = given
        else:
            raise UsageError(
                f"the label column {args.label_column!r} holds {_kind(values)} {values[:5]} without names; give the "
                f"word for each with --label_words VALUE=WORD, e.g. --label_words "
                f"{' '.join(f'{key}=WORD' for key in [_value_keys(value)[0] for value in values[:3]])}"
            )
        outside = [value for value in values if value not in value_to_id]
        if outside:
            example = " ".join(f"{_value_keys(value)[0]}={words[value_to_id[value]] if value in value_to_id else 'WORD'}"
                               for value in values[:4])
            raise UsageError(
                f"labels {outside[:5]} in column {args.label_column!r} have no label word (label words: {words}); "
                f"add them to --label_words, map each label value to its word (--label_words {example}), or fix "
                f"the data"
            )
    _check_words(words)
    return words, value_to_id


def _kind(values: list) -> str:
    return "true/false values" if all(isinstance(value, bool) for value in values) else "numbers"


def _value_keys(value) -> tuple[str, ...]:
    """How ``--label_words`` may write a label value: ``Positive``, ``0``, ``True`` (or ``true``), ``1`` for 1.0."""
    if isinstance(value, bool):
        return str(value), str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value)), str(value)
    return (str(value),)


def _apply_label_map(pairs: dict[str, str], keys_of: dict, args: DataArguments) -> tuple[list[str], dict]:
    """(words, value -> class id) for the label values in ``keys_of`` (each with the ways it may be written)."""
    word_of, missing = {}, []
    for value, keys in keys_of.items():
        key = next((key for key in keys if key in pairs), None)
        if key is None:
            missing.append(keys[0])
        else:
            word_of[value] = pairs[key]
    if missing:
        raise UsageError(
            f"label values {missing[:5]} of column {args.label_column!r} have no word in --label_words "
            f"{' '.join(args.label_words)}; add VALUE=WORD for each of them"
        )
    words = list(dict.fromkeys([*word_of.values(), *pairs.values()]))
    return words, {value: words.index(word) for value, word in word_of.items()}


def _check_class_ids(train, evaluation, args: DataArguments, feature) -> None:
    """ClassLabel values outside the classes, such as -1 (GLUE and SuperGLUE test splits hide their labels)."""
    splits = [(evaluation, args.eval_split)] if train is evaluation else [(train, args.train_split),
                                                                         (evaluation, args.eval_split)]
    for split, name in splits:
        outside = sorted({value for value in split.unique(args.label_column)
                          if value is None or not 0 <= value < feature.num_classes}, key=str)
        if outside:
            raise UsageError(
                f"the {name} split's label column {args.label_column!r} holds {outside[:3]}, which is no class of "
                f"{feature.names} (-1 means no label: GLUE's and SuperGLUE's test splits hide theirs); train and "
                f"evaluate on labelled splits, e.g. --eval_split validation"
            )


def label_map_record(train, args: DataArguments, words: list[str], value_to_id: dict) -> dict[str, str]:
    """Each label value (a ClassLabel's name; the text of any other value) to its word, for results.json."""
    from datasets import ClassLabel

    feature = train.features[args.label_column]
    if isinstance(feature, ClassLabel):
        return {feature.names[value]: words[index] for value, index in value_to_id.items()}
    return {_value_keys(value)[0]: words[index] for value, index in value_to_id.items()}


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
                f"answer could never match it; choose words the tokenizer knows, or map each label value to one with "
                f"--label_words VALUE=WORD (e.g. {word}={decoded or 'WORD'})"
            )


# -------------------------------------------------------------------------------------------------- preparation
def _check_split(dataset, name: str, args: DataArguments) -> None:
    columns = [args.label_column] if args.input_template else [args.text_column, args.label_column]
    for column in columns:
        if column not in dataset.column_names:
            option = "--text_column" if column == args.text_column and not args.input_template else "--label_column"
            raise UsageError(
                f"the {name} split has no column {column!r} (columns: {dataset.column_names}); name the right one "
                f"with {option}"
            )
    input_template(args).check_columns(dataset.column_names, f"the {name} split")
    if len(dataset) == 0:
        raise UsageError(f"the {name} split is empty; give a dataset with examples in it")


def _subset(dataset, size: int | None, seed: int):
    """A seeded shuffled subset: the Hub's IMDB splits are sorted by label, so the first N rows are one class."""
    if size is None or size >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(size)).flatten_indices()


def _check_texts(texts: list, where: str, column: str, option: str = "--text_column") -> None:
    """Every row must hold text: not a number, not empty (row numbers count the rows from 0, in file order).
    ``option`` is the flag that chose the column (``--text_column``, or ``--input_template`` for its columns)."""
    not_text = [index for index, text in enumerate(texts) if text is not None and not isinstance(text, str)]
    if not_text:
        example = texts[not_text[0]]
        raise UsageError(
            f"{where}'s column {column!r} holds {type(example).__name__} values, not text (row "
            f"{not_text[0]}: {example!r}); name the column of texts with {option}"
        )
    empty = [index for index, text in enumerate(texts) if text is None or not text.strip()]
    if empty:
        raise UsageError(
            f"{len(empty)} rows of {where} have an empty {column!r} (the first is row {empty[0]}, "
            f"counting from 0 in the file's order); remove them or choose another {option}"
        )


def column_values(dataset, column: str) -> list:
    """The values of one column of a ``datasets.Dataset`` as a list, read in one batch. (From datasets 4 on,
    ``dataset[column]`` is a lazy ``Column`` that is read row by row as it is iterated: on 2,000 rows that took 27 ms
    a pass against 0.7 ms so, and a run made several such passes over its whole splits.)"""
    return dataset.select_columns([column])[:][column]


def _check_inputs(split, where: str, args: DataArguments, template: InputTemplate) -> None:
    option = "--input_template" if args.input_template else "--text_column"
    for column in template.columns:
        _check_texts(column_values(split, column), where, column, option)


def _warn_about_labels(train, evaluation, args: DataArguments, words: list[str], value_to_id: dict) -> None:
    """Allowed, but likely a mistake: one class to train on, evaluation classes never trained on, tiny inputs."""
    trained = {value_to_id[value] for value in column_values(train, args.label_column)}
    evaluated = {value_to_id[value] for value in column_values(evaluation, args.label_column)}
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
    template = input_template(args)
    template.check_fits(tokenizer, args.max_source_length)
    _check_inputs(train, f"the {args.train_split} split", args, template)
    _check_inputs(evaluation, f"the {args.eval_split} split", args, template)
    label_map = label_map_record(train, args, words, value_to_id)
    train = _subset(train, args.max_train_samples, seed)
    evaluation = _subset(evaluation, args.max_eval_samples, seed)
    _warn_about_labels(train, evaluation, args, words, value_to_id)
    tokenize = _tokenizer_function(args, tokenizer, words, value_to_id, template)
    return PreparedData(_tokenized(train, tokenize, False), _tokenized(evaluation, tokenize, True), words,
                        template.text, label_map)


def load_eval_data(args: DataArguments, tokenizer, label_words: list[str], seed: int = 42) -> PreparedData:
    """Only the evaluation split, prepared as :func:`load_data` prepares it, with a trained run's ``label_words``.

    With ``--label_words`` as VALUE=WORD pairs (the run's own, or given for this data), each value's word must be one
    of ``label_words``; otherwise the data's labels must be among ``label_words`` (ClassLabel columns in the run's
    class order). The returned ``train_dataset`` is ``None``.
    """
    label_words = list(label_words)
    pairs = label_map_pairs(args.label_words)
    if pairs is None:
        args = dataclasses.replace(args, label_words=label_words)
    evaluation = _split(load_raw_dataset(args, evaluation_only=True), args.eval_split, "--eval_split", args)
    words, value_to_id = resolve_label_words(evaluation, evaluation, args)
    if pairs is not None:  # this data's words, as class ids of the run
        foreign = [word for word in words if word not in label_words]
        if foreign:
            raise UsageError(f"--label_words maps labels to {foreign}, which the run was not trained to write (its "
                             f"label words: {label_words})")
        value_to_id = {value: label_words.index(words[index]) for value, index in value_to_id.items()}
    template = input_template(args)
    template.check_fits(tokenizer, args.max_source_length)
    _check_inputs(evaluation, f"the {args.eval_split} split", args, template)
    label_map = label_map_record(evaluation, args, label_words, value_to_id)
    evaluation = _subset(evaluation, args.max_eval_samples, seed)
    tokenize = _tokenizer_function(args, tokenizer, label_words, value_to_id, template)
    return PreparedData(None, _tokenized(evaluation, tokenize, True), label_words, template.text, label_map)


def _split(raw, name: str, option: str, args: DataArguments):
    if name not in raw:
        raise UsageError(f"the dataset has no split {name!r} (splits: {list(raw)}); choose one with {option}")
    _check_split(raw[name], name, args)
    return raw[name]


def prepare_texts(texts: list, args: DataArguments) -> list:
    """The run's own cleaning (the reference notebook's, unless --no_clean_text)."""
    return [clean_review(text) if args.clean_text else text for text in texts]


def _tokenizer_function(args: DataArguments, tokenizer, words: list[str], value_to_id: dict,
                        template: InputTemplate):
    def tokenize(batch):
        targets = [words[value_to_id[value]] for value in batch[args.label_column]]
        encoded = encode_inputs(batch, args, tokenizer, template)
        encoded["labels"] = tokenizer(text_target=targets).input_ids
        return encoded

    return tokenize


def _tokenized(dataset, tokenize, sort_by_length: bool):
    """``dataset`` tokenized (only model inputs and labels left), longest first when ``sort_by_length``."""
    dataset = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, desc="Tokenizing")
    if sort_by_length:
        lengths = np.array([len(ids) for ids in column_values(dataset, "input_ids")])
        dataset = dataset.select(np.argsort(-lengths, kind="stable")).flatten_indices()
    return dataset
