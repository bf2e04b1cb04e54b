"""The Python examples in the docs run as written (in a temporary folder, on the built-in tiny model)."""

from __future__ import annotations

import re

import pytest

from .conftest import REPO_ROOT


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("block", python_blocks(REPO_ROOT / "docs" / "api.md"))
def test_api_doc_examples_run(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/api.md", "exec"), {})
