"""The data pipeline: cleaning, verbalizer, label words, subsets, local files, and its refusals."""

from __future__ import annotations

import pytest

from hf_peft_suite.arguments import DataArguments
from hf_peft_suite.data import clean_review, load_data
from hf_peft_suite.errors import UsageError
from hf_peft_suite.metrics import LabelScorer
from hf_peft_suite.tiny import TINY_DATASET_NAME

from .conftest import requires_shared
from .helpers import write_split_files


def test_clean_review_replaces_html_breaks_and_lowercases():
    assert clean_review("Great FILM.<br /><br />Loved it") == "great film.  loved it"


def test_cleaning_can_be_switched_off(tiny_tokenizer):
    kept = load_data(DataArguments(dataset_name=TINY_DATASET_NAME, clean_text=False), tiny_tokenizer)
    cleaned = load_data(DataArguments(dataset_name=TINY_DATASET_NAME), tiny_tokenizer)
    unknown = tiny_tokenizer.unk_token_id
    # Without cleaning, '<br />' is an unknown word to the tiny tokenizer; with cleaning it is gone.
    assert any(unknown in ids for ids in kept.train_dataset["input_ids"])
    assert not any(unknown in ids for ids in cleaned.train_dataset["input_ids"])


def test_classlabel_names_go_through_the_verbalizer(tiny_tokenizer):
    data = load_data(DataArguments(dataset_name=TINY_DATASET_NAME, max_eval_samples=50), tiny_tokenizer)
    assert data.label_words == ["negative", "positive"]
    assert set(data.train_dataset.column_names) == {"input_ids", "attention_mask", "labels"}
    targets = {tuple(ids) for ids in data.eval_dataset["labels"]}
    assert targets == {tuple(tiny_tokenizer(text_target=w).input_ids) for w in ("negative", "positive")}


def test_eval_split_is_sorted_longest_first(tiny_tokenizer):
    data = load_data(DataArguments(dataset_name=TINY_DATASET_NAME), tiny_tokenizer)
    lengths = [len(ids) for ids in data.eval_dataset["input_ids"]]
    assert lengths == sorted(lengths, reverse=True)




ROWS = [{"review": "great movie", "sentiment": "positive"}, {"review": "awful plot", "sentiment": "negative"}] * 4


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_local_folder_of_split_files_with_string_labels(tmp_path, tiny_tokenizer, suffix):
    folder = write_split_files(tmp_path / "data", ROWS, ROWS[:4], suffix)
    args = DataArguments(dataset_name=str(folder), text_column="review", label_column="sentiment")
    data = load_data(args, tiny_tokenizer)
    assert data.label_words == ["negative", "positive"]  # string labels, sorted
    assert len(data.train_dataset) == 8 and len(data.eval_dataset) == 4


def test_train_and_eval_files(tmp_path, tiny_tokenizer):
    folder = write_split_files(tmp_path / "data", ROWS, ROWS[:2])
    args = DataArguments(
        train_file=str(folder / "train.csv"), eval_file=str(folder / "test.csv"),
        text_column="review", label_column="sentiment", label_words=["positive", "negative"],
    )
    data = load_data(args, tiny_tokenizer)
    assert data.label_words == ["positive", "negative"]  # the given order defines the class ids


@requires_shared
def test_four_classes_with_multi_token_label_words(t5_small_path):
    """The four-class IMDB variant from ../shared: 'very negative' is two T5 pieces, so 3 new tokens are needed."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(t5_small_path)
    folder = t5_small_path.parent.parent / "data" / "imdb-rating4"
    args = DataArguments(dataset_name=str(folder), text_column="review", label_column="sentiment",
                         max_train_samples=40, max_eval_samples=40)
    data = load_data(args, tokenizer)
    assert data.label_words == ["negative", "positive", "very negative", "very positive"]
    assert LabelScorer(tokenizer, data.label_words).max_new_tokens == 3


@requires_shared
def test_subsets_are_seeded_shuffles_of_a_label_sorted_split(shared_imdb, t5_small_path):
    """The Hub's IMDB test split is sorted by label: a subset must be shuffled, not the first N rows."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    raw_test = load_dataset(str(shared_imdb), split="test")
    assert set(raw_test[:300]["label"]) == {0}  # the trap a plain .select(range(N)) falls into
    tokenizer = AutoTokenizer.from_pretrained(t5_small_path)
    args = DataArguments(dataset_name=str(shared_imdb), max_train_samples=300, max_eval_samples=300)
    first = load_data(args, tokenizer, seed=1)
    again = load_data(args, tokenizer, seed=1)
    positive = tuple(tokenizer(text_target="positive").input_ids)
    share = sum(tuple(ids) == positive for ids in first.eval_dataset["labels"]) / 300
    assert 0.4 < share < 0.6
    assert first.eval_dataset["input_ids"] == again.eval_dataset["input_ids"]
    assert len(first.eval_dataset[0]["input_ids"]) == 256  # truncated to max_source_length


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"text_column": "review"}, "no column 'review'.*--text_column"),
        ({"label_column": "stars"}, "no column 'stars'.*--label_column"),
        ({"eval_split": "validation"}, "no split 'validation'.*--eval_split"),
        ({"label_words": ["bad"]}, "1 words but .* 2 classes"),
        ({"label_words": ["good", "good"]}, "different from each other"),
        ({"label_words": ["negative", "zzzunknownzzz"]}, "does not survive this tokenizer"),
        ({"dataset_name": "./no/such/folder"}, "does not exist"),
    ],
)
def test_bad_data_arguments_are_refused_before_training(tiny_tokenizer, overrides, message):
    args = DataArguments(**{"dataset_name": TINY_DATASET_NAME, **overrides})
    with pytest.raises(UsageError, match=message):
        load_data(args, tiny_tokenizer)


def test_unreachable_hub_dataset_points_to_the_offline_ways(tiny_tokenizer, tmp_path, monkeypatch):
    """HF_DATASETS_OFFLINE=1 (conftest) makes the Hub path fail at once, as it does without network.

    A fresh datasets cache: loading a local folder named "imdb" caches it under the name "imdb", and offline
    `load_dataset("imdb")` would then return that copy instead of failing.
    """
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    with pytest.raises(UsageError, match="cannot load the dataset 'imdb' from the Hugging Face Hub.*--preset tiny"):
        load_data(DataArguments(dataset_name="imdb"), tiny_tokenizer)


def test_zero_samples_is_refused():
    with pytest.raises(UsageError, match="--max_eval_samples must be at least 1"):
        DataArguments(max_eval_samples=0)


def test_labels_outside_the_label_words_are_refused(tmp_path, tiny_tokenizer):
    rows = ROWS + [{"review": "dull plot", "sentiment": "mixed"}]
    folder = write_split_files(tmp_path / "data", rows, ROWS[:2])
    args = DataArguments(dataset_name=str(folder), text_column="review", label_column="sentiment",
                         label_words=["negative", "positive"])
    with pytest.raises(UsageError, match=r"labels \['mixed'\].*no label word"):
        load_data(args, tiny_tokenizer)


def test_integer_labels_without_names_need_label_words(tmp_path, tiny_tokenizer):
    rows = [{"text": "great movie", "label": 1}, {"text": "awful plot", "label": 0}]
    folder = write_split_files(tmp_path / "data", rows, rows)
    with pytest.raises(UsageError, match="without names.*--label_words"):
        load_data(DataArguments(dataset_name=str(folder)), tiny_tokenizer)
    data = load_data(DataArguments(dataset_name=str(folder), label_words=["negative", "positive"]), tiny_tokenizer)
    assert data.label_words == ["negative", "positive"]


def test_empty_texts_and_empty_splits_are_refused(tmp_path, tiny_tokenizer):
    rows = [{"text": "great movie", "label": "positive"}, {"text": "  ", "label": "negative"}]
    folder = write_split_files(tmp_path / "blank", rows, rows[:1])
    with pytest.raises(UsageError, match="1 rows of the train split have an empty 'text'.*row 1"):
        load_data(DataArguments(dataset_name=str(folder)), tiny_tokenizer)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.csv").write_text("text,label\ngreat movie,positive\n")
    (empty / "test.csv").write_text("text,label\n")
    with pytest.raises(UsageError, match="(the test split is empty|cannot read)"):
        load_data(DataArguments(dataset_name=str(empty)), tiny_tokenizer)


@pytest.mark.parametrize("template", [None, "review: {text}"], ids=["text_column", "input_template"])
def test_load_data_reads_each_column_in_one_batch_not_row_by_row(template, tiny_tokenizer, monkeypatch):
    """From datasets 4 on, ``dataset[column]`` is a lazy ``Column`` read row by row as it is iterated: a pass over
    IMDB's 25,000 training texts took 0.72 s so, 0.03 s in one batch (``column_values``), and a run made several."""
    import datasets

    asked, real = [], datasets.Dataset.__getitem__

    def getitem(self, key):
        if isinstance(key, str):
            asked.append(key)
        return real(self, key)

    monkeypatch.setattr(datasets.Dataset, "__getitem__", getitem)
    data = load_data(DataArguments(dataset_name=TINY_DATASET_NAME, input_template=template, max_train_samples=64,
                                   max_eval_samples=16), tiny_tokenizer)
    assert (len(data.train_dataset), len(data.eval_dataset)) == (64, 16)
    assert asked == []
