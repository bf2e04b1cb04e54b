"""The Python examples in README.md and docs/api.md run as written (in a temporary folder, on the built-in tiny model)
and print what they say they print."""

from __future__ import annotations

import re

import pytest

from .conftest import REPO_ROOT, readme_python_example


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


DOCUMENTS = ["README.md", "docs/api.md"]
PARAMETERS = r"\{'total': 169216, 'trainable': 169216, 'trainable_percent': 100\.0\}"  # the tiny T5, fully trained
# What each example prints, line by line (each pattern matches a line, in this order; other lines may come between).
PRINTED = {
    ("README.md", 0): [r"best valid_acc 0\.\d{4} at epoch \d.*", rf"0\.9\d* {PARAMETERS}", r"\['positive', 'negative'\]"],
    ("docs/api.md", 0): [r"best accuracy 0\.\d{3} at epoch [12](\.0)?", PARAMETERS],
    ("docs/api.md", 1): [r"[01]\.\d+ [01]\.\d+"],  # a user's metric (the share of "positive" answers), accuracy
    ("docs/api.md", 2): [r"positive <- A wonderful and moving film", r"negative <- dull, tedious and far too long",
                         r"0\.\d+ \d+\.\d+ 100"],  # accuracy, loss, 100 examples scored
    ("docs/api.md", 3): [rf"\['negative', 'positive'\] {PARAMETERS}",
                         r"\{'eval_loss': .*'eval_accuracy': 0\.\d+.*'eval_num_scored': 400.*\}"],
}
BLOCKS = [(document, index, block) for document in DOCUMENTS
          for index, block in enumerate(python_blocks(REPO_ROOT / document))]


def assert_printed(output: str, patterns: list[str]) -> None:
    lines = output.splitlines()
    for pattern in patterns:
        found = next((position for position, line in enumerate(lines) if re.fullmatch(pattern, line)), None)
        assert found is not None, (pattern, output[-3000:])
        lines = lines[found + 1:]


def test_every_example_says_what_it_prints():
    assert {(document, index) for document, index, _ in BLOCKS} == set(PRINTED)


@pytest.mark.slow
def test_the_python_example_of_the_readme_prints_what_it_says(readme_example):
    """Run as written in a fresh interpreter by the session (``readme_example``): test_console.py checks that it is
    quiet, test_experiment.py what it wrote."""
    assert python_blocks(REPO_ROOT / "README.md")[0] == readme_python_example()
    assert readme_example.result.returncode == 0, readme_example.result.stderr[-3000:]
    assert_printed(readme_example.result.stdout, PRINTED[("README.md", 0)])


@pytest.mark.slow
@pytest.mark.parametrize(("document", "index", "block"), [
    pytest.param(document, index, block, id=f"{document}-block{index}") for document, index, block in BLOCKS
    if (document, index) != ("README.md", 0)
])
def test_python_examples_in_the_docs_run(document, index, block, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, document, "exec"), {})
    assert_printed(capsys.readouterr().out, PRINTED[(document, index)])


def test_the_recommended_settings_table_in_docs_results_is_the_registrys():
    """docs/results.md restates each method's recommended learning rate; the method file is the source."""
    from hf_peft_suite.methods import METHODS

    text = (REPO_ROOT / "docs" / "results.md").read_text()
    table = text[text.index("| method | learning rate |"):].split("\n\n")[0].splitlines()[2:]
    documented = {}
    for row in table:
        name, rate = (cell.strip() for cell in row.strip("|").split("|")[:2])
        documented[name.split(" (")[0].lower().replace(" ", "_")] = float(rate)
    assert documented == {name: method.default_learning_rate for name, method in METHODS.items()}
