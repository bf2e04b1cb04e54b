"""The method registry: method name -> :class:`~hf_peft_suite.methods.base.Method` (how to build it from scratch and
with a PEFT library, its options, recommended settings and artifact formats).

Each technique lives in one file of this package that defines a ``METHOD``, with the hand-written module and the
library configuration side by side. Nothing here knows about the CLI, the dataset or the Trainer: a builder takes a
base ``PreTrainedModel`` and the method's options and returns the model to train.
"""

from __future__ import annotations

from ..errors import UsageError
from . import adapter, full, ia3, lora, prefix_tuning, prompt_tuning
from .base import IMPLEMENTATIONS, Method, Recommended, library_problem

METHODS: dict[str, Method] = {
    method.name: method
    for method in (full.METHOD, prompt_tuning.METHOD, adapter.METHOD, lora.METHOD, ia3.METHOD, prefix_tuning.METHOD)
}

__all__ = ["IMPLEMENTATIONS", "METHODS", "Method", "Recommended", "build_method_model", "get_method",
           "library_problem"]


def get_method(name: str) -> Method:
    """The registered method called ``name``; a :class:`UsageError` listing the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(f"unknown method {name!r}; choose one of {', '.join(METHODS)} (--method NAME)") from None


def build_method_model(base_model, method_name: str, implementation: str, options=None, tokenizer=None):
    """Apply ``method_name`` in ``implementation`` to ``base_model`` and return the model to train."""
    return get_method(method_name).builder(implementation)(base_model, options, tokenizer)
