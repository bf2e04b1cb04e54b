"""The package as a user imports it: what ``import hf_peft_suite`` loads, and what it registers (in a fresh
interpreter: the session's ``fresh_interpreter``, conftest.py)."""

from __future__ import annotations

import pytest

from hf_peft_suite.methods import METHODS, build_method_model
from hf_peft_suite.tiny import build_tiny_model


@pytest.mark.slow
def test_import_registers_the_scratch_methods_and_loads_no_library_data_or_trainer_code(fresh_interpreter,
                                                                                        tiny_tokenizer):
    assert fresh_interpreter["heavy"] == []
    # Every hand-written method's config type is registered with AutoConfig, and AutoModelForSeq2SeqLM maps it to
    # the method's own model class: what the scratch cells build here.
    expected = {}
    for name in METHODS:
        if name != "full":
            model = build_method_model(build_tiny_model(), name, "scratch", None, tiny_tokenizer)
            expected[model.config.model_type] = [type(model.config).__name__, type(model).__name__]
    assert fresh_interpreter["registered"] == expected
    assert sorted(expected) == fresh_interpreter["model_types"]  # and the package defines no other delta config
