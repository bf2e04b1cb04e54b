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
