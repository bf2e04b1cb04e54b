"""The method registry: method name -> :class:`~hf_peft_suite.methods.base.Method` (how to build it from scratch and
with a PEFT library, its options, recommended settings and artifact formats).

Each technique lives in one file of this package that defines a ``METHOD``, with the hand-written module and the
library configuration side by side. Nothing here knows about the CLI, the dataset or the Trainer: a builder takes a
base ``PreTrainedModel`` and the method's options and returns the model to train.
"""

from __future__ import annotations

import sys

from ..errors import UsageError
from . import adapter, full, ia3, lora, prefix_tuning, prompt_tuning
from .base import IMPLEMENTATIONS, Method, Recommended, library_problem
from .delta import DeltaModel
from .formats import PEFT_ADAPTER, SCRATCH_DELTA, WHOLE_MODEL, ArtifactFormat

METHODS: dict[str, Method] = {
    method.name: method
    for method in (full.METHOD, prompt_tuning.METHOD, adapter.METHOD, lora.METHOD, ia3.METHOD, prefix_tuning.METHOD)
}

__all__ = ["IMPLEMENTATIONS", "METHODS", "Method", "Recommended", "artifact_format_of", "build_method_model",
           "get_method", "library_problem"]


def get_method(name: str) -> Method:
    """The registered method called ``name``; a :class:`UsageError` listing the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(f"unknown method {name!r}; choose one of {', '.join(METHODS)} (--method NAME)") from None


def build_method_model(base_model, method_name: str, implementation: str, options=None, tokenizer=None):
    """Apply ``method_name`` in ``implementation`` to ``base_model`` and return the model to train."""
    return get_method(method_name).builder(implementation)(base_model, options, tokenizer)


def artifact_format_of(model) -> ArtifactFormat:
    """The artifact format of a model built by hand rather than named by a method: a peft adapter, a scratch delta, an
    AdapterHub adapter this package added, or else the whole model. The libraries are not imported for it."""
    if "peft" in sys.modules:
        from peft import PeftModel

        if isinstance(model, PeftModel):
            prefix = str(getattr(model.active_peft_config.peft_type, "value", "")) == "PREFIX_TUNING"
            return prefix_tuning.PEFT_PREFIX if prefix else PEFT_ADAPTER
    if isinstance(model, DeltaModel):
        return SCRATCH_DELTA
    adapters_config = getattr(model, "adapters_config", None)
    if adapters_config is not None and adapters_config.get(adapter.LIBRARY_ADAPTER_NAME) is not None:
        return adapter.ADAPTERHUB_ADAPTER
    return WHOLE_MODEL
