"""How a cell's trainable weights are written to a folder, checked, and read back (checkpoints and ``model/``).

Each implementation of a method names its :class:`ArtifactFormat`; the Trainer and the experiment only call it, so
they never branch on model types. Three formats live here (the whole model, a scratch delta, a peft adapter);
AdapterHub's lives with the adapters (``adapter.py``).

A format's :meth:`~ArtifactFormat.check` refuses, with a :class:`~hf_peft_suite.errors.UsageError`, a folder that
another method, other options or another base wrote, or whose files cannot be read, before anything is loaded.
:meth:`~ArtifactFormat.load` loads in place and returns ``True``, or returns ``False`` to leave the loading to
``Trainer`` (which handles sharded and distributed models), whose load result the trainer then checks.
"""

from __future__ import annotations

import os
from typing import Callable

from ..compat import tested_requirement
from ..errors import UsageError
from ..files import MODEL_CONFIG_NAME, MODEL_WEIGHTS_INDEX_NAME, MODEL_WEIGHTS_NAME, PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME
from ..weights import check_saved_config, compare_shapes, tensor_shapes


class ArtifactFormat:
    """A whole model (full fine-tuning): ``save_pretrained`` writes every weight; ``Trainer`` loads them back."""

    name = "whole model"
    weights_name = MODEL_WEIGHTS_NAME

    def save(self, model, directory: str, state_dict: dict | None = None) -> None:
        """Write the trainable weights and their config. ``state_dict``: the full state dict Trainer gathers under
        FSDP or DeepSpeed (``None``: the model's own)."""
        model.save_pretrained(directory, state_dict=state_dict)

    def check(self, model, directory: str) -> None:
        """Refuse a folder whose weights are missing or unreadable (names are checked after Trainer loads them)."""
        path = os.path.join(directory, self.weights_name)
        if not os.path.isfile(path):
            if os.path.isfile(os.path.join(directory, MODEL_WEIGHTS_INDEX_NAME)):
                return  # a sharded whole model: Trainer loads the shards, then the load result is checked
            raise UsageError(f"it holds no {self.weights_name}, the weights this model saves")
        tensor_shapes(path)

    def load(self, model, directory: str) -> bool:
        """Load in place and return ``True``; ``False`` leaves it to ``Trainer``."""
        return False

    def load_trained(self, directory: str, base: Callable[[], object]):
        """The trained model saved in ``directory`` (a run's ``model/``). ``base()`` loads the frozen base model,
        for formats that hold only a delta and do not name it themselves."""
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM.from_pretrained(directory, use_safetensors=True)


class DeltaFormat(ArtifactFormat):
    """A scratch delta (:class:`~hf_peft_suite.methods.delta.DeltaModel`): ``config.json`` (the method's options and
    the base's architecture) and ``model.safetensors`` holding only the delta's tensors."""

    name = "scratch delta"

    def check(self, model, directory: str) -> None:
        check_saved_config(os.path.join(directory, MODEL_CONFIG_NAME), model.config.to_dict())
        expected = {name: tuple(tensor.shape) for name, tensor in model.delta_state_dict().items()}
        path = os.path.join(directory, self.weights_name)
        if not os.path.isfile(path):
            raise UsageError(f"it holds no {self.weights_name}, the weights this model saves")
        compare_shapes(expected, tensor_shapes(path), path)


class PeftAdapterFormat(ArtifactFormat):
    """A peft adapter: ``adapter_config.json`` and ``adapter_model.safetensors``, without embedding layers (no method
    here trains them; peft would otherwise look the base model up on the Hub to decide)."""

    name = "peft adapter"
    weights_name = PEFT_WEIGHTS_NAME

    def save(self, model, directory: str, state_dict: dict | None = None) -> None:
        model.save_pretrained(directory, state_dict=state_dict, save_embedding_layers=False)

    def check(self, model, directory: str) -> None:
        from peft import get_peft_model_state_dict

        check_saved_config(os.path.join(directory, PEFT_CONFIG_NAME), model.peft_config["default"].to_dict())
        expected = get_peft_model_state_dict(model, save_embedding_layers=False)
        path = os.path.join(directory, self.weights_name)
        if not os.path.isfile(path):
            raise UsageError(f"it holds no {self.weights_name}, the weights this model saves")
        compare_shapes({name: tuple(tensor.shape) for name, tensor in expected.items()}, tensor_shapes(path), path)

    def load_trained(self, directory: str, base: Callable[[], object]):
        from peft import PeftModel

        return PeftModel.from_pretrained(base(), directory)


WHOLE_MODEL = ArtifactFormat()
SCRATCH_DELTA = DeltaFormat()
PEFT_ADAPTER = PeftAdapterFormat()

# The library side every peft-backed method shares (``Method(..., **PEFT_LIBRARY)``): the format, module, install hint.
PEFT_LIBRARY = {"library_format": PEFT_ADAPTER, "library_module": "peft",
                "library_install_hint": f"pip install '{tested_requirement('peft')}'"}
