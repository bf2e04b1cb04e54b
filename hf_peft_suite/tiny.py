"""A tiny, offline stand-in for t5-small and IMDB, built in code (no download).

``--preset tiny`` (``--model_name_or_path builtin:tiny-t5 --dataset_name builtin:tiny-sentiment``) runs the whole
pipeline on these in well under two minutes on two CPU cores. The reviews are made from a small word list: each
has several sentiment words of its class and fewer of the other class among neutral filler, and some carry IMDB's
``<br />`` and capital letters, so the cleaning step has something to do. Everything is seeded and deterministic.

The tokenizer is a whitespace word-level tokenizer over that word list with T5's special tokens
(``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2) and ``</s>`` appended to every sequence, as T5's tokenizer does.
"""

from __future__ import annotations

import random
from functools import lru_cache

TINY_MODEL_NAME = "builtin:tiny-t5"
TINY_DATASET_NAME = "builtin:tiny-sentiment"

POSITIVE_WORDS = (
    "great wonderful superb brilliant moving delightful masterful charming excellent beautiful "
    "touching clever gripping fun stunning"
).split()
NEGATIVE_WORDS = (
    "awful boring terrible dull clumsy tedious dreadful weak lifeless poor "
    "bland messy silly forgettable annoying"
).split()
FILLER_WORDS = (
    "the movie film plot acting was and a story cast director it scenes music ending really quite with "
    "but at times this of in is script camera score pacing lead actor actress screen hour sequel"
).split()
LABEL_WORDS = ("negative", "positive")
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def tiny_vocabulary() -> list[str]:
    """Special tokens first (ids 0, 1, 2 as in T5), then every word the tiny data and labels use."""
    words = sorted(set(POSITIVE_WORDS + NEGATIVE_WORDS + FILLER_WORDS + list(LABEL_WORDS) + ["very"]))
    return list(SPECIAL_TOKENS) + words


def build_tiny_tokenizer():
    """A ``PreTrainedTokenizerFast`` over :func:`tiny_vocabulary` that behaves like T5's for our purposes."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocabulary = {token: index for index, token in enumerate(tiny_vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )


def tiny_t5_config(vocab_size: int | None = None):
    """A two-layer T5 with d_model 64 (about 0.2 M parameters) and t5-small's conventions."""
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab_size or len(tiny_vocabulary()),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def build_tiny_model(seed: int = 0):
    """A randomly initialised ``T5ForConditionalGeneration`` with :func:`tiny_t5_config`; same seed, same weights."""
    import torch
    from transformers import T5ForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(tiny_t5_config())
    model.generation_config.update(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return model


def make_tiny_review(label: int, rng: random.Random) -> str:
    """One synthetic review whose sentiment words favour ``label`` (0 negative, 1 positive) 3 to 1 or so."""
    own, other = (POSITIVE_WORDS, NEGATIVE_WORDS) if label == 1 else (NEGATIVE_WORDS, POSITIVE_WORDS)
    words = [rng.choice(FILLER_WORDS) for _ in range(rng.randint(8, 30))]
    sentiment = [rng.choice(own) for _ in range(rng.randint(2, 4))]
    sentiment += [rng.choice(other) for _ in range(rng.randint(0, 1))]
    for word in sentiment:
        words.insert(rng.randrange(len(words) + 1), word)
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words) + 1), "<br />")
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    return " ".join(words)


def build_tiny_dataset(num_train: int = 2000, num_test: int = 400, seed: int = 0):
    """A ``DatasetDict`` shaped like the Hub's ``imdb``: splits train/test, ``text``, ``label`` ClassLabel neg/pos.

    Like the real ``imdb`` splits, each split is sorted by label (all negatives first), so code that takes the first
    N rows without shuffling is caught by tests. The splits are made once per process and arguments (writing 2,400
    reviews takes a third of a second, as long as a tiny run's training); each call gets a ``DatasetDict`` of its own
    around them (a ``Dataset``'s operations return new datasets, never change it).
    """
    from datasets import DatasetDict

    train, test = _tiny_splits(num_train, num_test, seed)
    return DatasetDict(train=train, test=test)


@lru_cache(maxsize=8)
def _tiny_splits(num_train: int, num_test: int, seed: int) -> tuple:
    from datasets import ClassLabel, Dataset, Features, Value

    rng = random.Random(seed)
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})

    def split(size: int) -> Dataset:
        labels = sorted(index % 2 for index in range(size))
        return Dataset.from_dict({"text": [make_tiny_review(y, rng) for y in labels], "label": labels}, features)

    return split(num_train), split(num_test)
