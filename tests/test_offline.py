"""A first run without network: failing fast offline, local copies of the model and the data, and messages that name
nothing outside the package."""

from __future__ import annotations

import os
import re
import time

import pytest

from .conftest import REPO_ROOT


def test_offline_a_bare_run_fails_in_seconds_with_one_error_line(capsys):
    """``python run_experiment.py``, nothing else, with HF_HUB_OFFLINE=1 (conftest): the command in this process
    (test_bad_input.py starts a real one for the exit code and the single stderr line)."""
    from hf_peft_suite.cli import main

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    started = time.perf_counter()
    code = main([])
    seconds = time.perf_counter() - started
    stderr = capsys.readouterr().err
    assert code == 2
    assert stderr.strip().splitlines() == [stderr.strip()]
    assert stderr.startswith("error: cannot load the tokenizer 't5-small'") and "--preset tiny" in stderr
    assert seconds < 40, seconds  # the Hub is not asked (without HF_HUB_OFFLINE it retries for about 50 s here)


@pytest.mark.parametrize("layout", ["hub", "to_parquet"])
def test_local_copies_in_the_layouts_the_readme_makes_run_offline(layout, tmp_path):
    """README, offline: a model folder as ``save_pretrained`` (or a Hub download of one) leaves it, and a dataset
    folder in the Hub's layout (``plain_text/{train,test}-00000-of-00001.parquet``, what ``snapshot_download`` of
    IMDB gives) or of ``train.parquet`` / ``test.parquet`` (what ``Dataset.to_parquet`` writes), given by path."""
    from hf_peft_suite import run_experiment
    from hf_peft_suite.tiny import build_tiny_dataset, build_tiny_model, build_tiny_tokenizer

    model_dir, data_dir = tmp_path / "t5-small", tmp_path / "imdb"
    build_tiny_model().save_pretrained(model_dir)
    build_tiny_tokenizer().save_pretrained(model_dir)
    for split, dataset in build_tiny_dataset(num_train=64, num_test=16).items():
        name = f"plain_text/{split}-00000-of-00001.parquet" if layout == "hub" else f"{split}.parquet"
        dataset.to_parquet(str(data_dir / name))
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # (conftest)
    results = run_experiment(model_name_or_path=str(model_dir), dataset_name=str(data_dir), max_steps=2,
                             max_source_length=64, output_dir=str(tmp_path / "run"))
    assert results["num_train_examples"] == 64 and results["num_eval_examples"] == 16
    assert results["label_words"] == ["negative", "positive"]  # the ClassLabel names survived the copy


def test_no_message_of_the_package_names_a_file_outside_it():
    import ast

    package = REPO_ROOT / "hf_peft_suite"
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                assert not re.search(r"shared/|configs/|docs/|\.\./", node.value), (path, node.value)
