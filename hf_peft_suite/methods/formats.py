"""How a cell's trainable weights are written to a folder, checked, and read back (checkpoints and ``model/``).

Each implementation of a method names its :class:`ArtifactFormat`; the Trainer and the experiment only call it, so
they never branch on model types. Three formats live here (the whole model, a scratch delta, a peft adapter);
AdapterHub's lives with the adapters (``adapter.py``).

A format's :meth:`~ArtifactFormat.check` refuses, with a :class:`~hf_peft_suite.errors.UsageError`, a folder that
another method, other options or another base wrote, or whose files cannot be read, before anything is loaded.
:meth:`~ArtifactFormat.load` loads a checked folder into the model in place (the optimizer keeps holding the same
parameters) and returns ``True``, or returns ``False`` to leave the loading to ``Trainer`` (a sharded whole model).
Resuming (``--resume_from_checkpoint``) and the best model (``--load_best_model_at_end``) both load this way.
:meth:`~ArtifactFormat.reload_problem` says why a model's checkpoints cannot be loaded back into it at all (peft's
projected prefix), so that resuming and ``--load_best_model_at_end`` are refused before training.
"""

from __future__ import annotations

import os
from typing import Callable

from ..compat import tested_requirement
from ..errors import UsageError
from ..files import MODEL_CONFIG_NAME, MODEL_WEIGHTS_INDEX_NAME, MODEL_WEIGHTS_NAME, PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME
from ..weights import check_saved_config, compare_shapes, load_tensors, sharded_tensor_shapes, tensor_shapes
from .sharding import full_shape_state_dict


class ArtifactFormat:
    """A whole model (full fine-tuning): ``save_pretrained`` writes every weight, and they are loaded back by name."""

    name = "whole model"
    weights_name = MODEL_WEIGHTS_NAME
    # Whether :meth:`save` takes the weights from the ``state_dict`` it is given (the one FSDP or DeepSpeed ZeRO-3
    # gathers from every process) rather than reading the model's own parameters, which those engines shard.
    saves_from_given_state_dict = True

    def save(self, model, directory: str, state_dict: dict | None = None) -> None:
        """Write the trainable weights and their config. ``state_dict``: the full state dict Trainer gathers under
        FSDP or DeepSpeed (``None``: the model's own)."""
        model.save_pretrained(directory, state_dict=state_dict)

    def reload_problem(self, model) -> str | None:
        """Why checkpoints of ``model`` cannot be loaded back into it (``None``: they can)."""
        return None

    def check(self, model, directory: str) -> None:
        """Refuse a folder whose weights are missing, unreadable, or do not hold every trainable parameter of
        ``model`` with its shape (tensors ``model`` does not have are refused too). Only headers are read."""
        path, index = os.path.join(directory, self.weights_name), os.path.join(directory, MODEL_WEIGHTS_INDEX_NAME)
        if os.path.isfile(path):
            saved = tensor_shapes(path)
        elif os.path.isfile(index):
            saved = sharded_tensor_shapes(index)
        else:
            raise UsageError(f"it holds no {self.weights_name}, the weights this model saves")
        check_whole_model_names(model, saved)

    def load(self, model, directory: str) -> bool:
        """Load a checked folder into ``model`` in place and return ``True``; ``False`` leaves it to ``Trainer``
        (a sharded whole model, which Trainer loads shard by shard)."""
        path = os.path.join(directory, self.weights_name)
        if not os.path.isfile(path):
            return False
        model.load_state_dict(load_tensors(path), strict=False)  # the tied embeddings are saved once
        return True

    def load_trained(self, directory: str, base: Callable[[], object]):
        """The trained model saved in ``directory`` (a run's ``model/``). ``base()`` loads the frozen base model,
        for formats that hold only a delta and do not name it themselves."""
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM.from_pretrained(directory, use_safetensors=True)


def check_whole_model_names(model, saved: dict[str, tuple]) -> None:
    """Refuse saved tensors that lack one of ``model``'s trainable parameters, hold one it does not have, or differ
    in shape. Tied weights are saved once, under the name ``named_parameters`` gives them."""
    trainable = {name: tuple(parameter.shape) for name, parameter in model.named_parameters()
                 if parameter.requires_grad}
    known = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    missing, unexpected = sorted(set(trainable) - set(saved)), sorted(set(saved) - set(known))
    wrong = [f"{name} {saved[name]} vs {known[name]}" for name in sorted(set(saved) & set(known))
             if tuple(saved[name]) != known[name]]
    if missing or unexpected or wrong:
        raise UsageError(
            f"its weights do not match this model's trainable parameters (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, other shapes {wrong[:2]}; {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} other shapes): it was saved by another method, with other options or for another base; "
            f"resume with the arguments of the run that wrote it"
        )


class DeltaFormat(ArtifactFormat):
    """A scratch delta (:class:`~hf_peft_suite.methods.delta.DeltaModel`): ``config.json`` (the method's options and
    the base's architecture) and ``model.safetensors`` holding only the delta's tensors."""

    name = "scratch delta"

    def check(self, model, directory: str) -> None:
        check_saved_config(os.path.join(directory, MODEL_CONFIG_NAME), model.config.to_dict())
        expected = model.delta_shapes()
        path = os.path.join(directory, self.weights_name)
        if not os.path.isfile(path):
            raise UsageError(f"it holds no {self.weights_name}, the weights this model saves")
        compare_shapes(expected, tensor_shapes(path), path)

    def load(self, model, directory: str) -> bool:
        model.load_delta_file(os.path.join(directory, self.weights_name))
        return True


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
        # Full shapes, without reading values: ZeRO-3 may hold the parameters partitioned (empty) while this runs.
        expected = get_peft_model_state_dict(model, state_dict=full_shape_state_dict(model),
                                             save_embedding_layers=False)
        path = os.path.join(directory, self.weights_name)
        if not os.path.isfile(path):
            raise UsageError(f"it holds no {self.weights_name}, the weights this model saves")
        compare_shapes({name: tuple(tensor.shape) for name, tensor in expected.items()}, tensor_shapes(path), path)

    def load(self, model, directory: str) -> bool:
        """peft's own ``set_peft_model_state_dict`` into the active adapter, in place (``load_adapter`` would build the
        adapter again, and refuses prompt-learning adapters: peft issue 2256)."""
        from peft import set_peft_model_state_dict

        weights = load_tensors(os.path.join(directory, self.weights_name))
        set_peft_model_state_dict(model, weights, adapter_name=model.active_adapter)
        return True

    def load_trained(self, directory: str, base: Callable[[], object]):
        from peft import PeftModel

        return PeftModel.from_pretrained(base(), directory)


WHOLE_MODEL = ArtifactFormat()
SCRATCH_DELTA = DeltaFormat()
PEFT_ADAPTER = PeftAdapterFormat()

# The library side every peft-backed method shares (``Method(..., **PEFT_LIBRARY)``): the format, module, install hint.
PEFT_LIBRARY = {"library_format": PEFT_ADAPTER, "library_module": "peft",
                "library_install_hint": f"pip install '{tested_requirement('peft')}'"}
