"""Shared fixtures: tiny models built in code, and the read-only ../shared material when it is there.

No test reaches the network. Tests that need ../shared (the real IMDB, the real t5-small tokenizer and config) skip
with a stated reason when it is absent, as it is in a user's clone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A private datasets cache: a local folder named "imdb" is cached under the name "imdb", and offline
# `load_dataset("imdb")` would then silently find it instead of failing as the Hub path does here.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf_peft_suite_datasets_")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# One intra-op thread (also for the CLI processes tests start): the tiny models gain nothing from more, and on a
# shared two-core machine OpenMP's spinning threads made each tiny training step 10-50x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
SHARED_IMDB = SHARED / "data" / "imdb"
SHARED_T5_SMALL = SHARED / "models" / "t5-small"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the real IMDB and t5-small tokenizer that CI keeps beside the checkout, which "
                    f"a user's clone does not have")
    return path


@pytest.fixture(scope="session")
def shared_imdb() -> Path:
    """The real IMDB in Hub layout (../shared/data/imdb)."""
    return _require(SHARED_IMDB)


@pytest.fixture(scope="session")
def t5_small_path() -> Path:
    """The real t5-small tokenizer and config, no weights (../shared/models/t5-small)."""
    return _require(SHARED_T5_SMALL)


@pytest.fixture(scope="session")
def t5_small_random(t5_small_path):
    """t5-small's architecture with random weights (60,506,624 parameters), built once per session."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    return AutoModelForSeq2SeqLM.from_config(AutoConfig.from_pretrained(t5_small_path))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from hf_peft_suite.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture
def tiny_model():
    """A fresh tiny T5 (random init, seed 0) for each test."""
    from hf_peft_suite.tiny import build_tiny_model

    return build_tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    """The tiny T5 saved as a normal model folder, so deltas can name it as their base."""
    from hf_peft_suite.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("tiny_base")
    build_tiny_model(seed=0).save_pretrained(path)
    return path
