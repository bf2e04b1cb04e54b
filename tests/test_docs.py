"""The Python examples in README.md and docs/api.md run as written (in a temporary folder, on the built-in tiny model)."""

from __future__ import annotations

import re

import pytest

from .conftest import REPO_ROOT


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


DOCUMENTS = ["README.md", "docs/api.md"]


@pytest.mark.parametrize(
    ("document", "block"),
    [(document, block) for document in DOCUMENTS for block in python_blocks(REPO_ROOT / document)],
)
def test_python_examples_in_the_docs_run(document, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, document, "exec"), {})


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
