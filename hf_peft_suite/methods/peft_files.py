"""peft's adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``), written and read for the scratch
methods' ``export_to_peft`` / ``import_from_peft``.

Reading needs no peft: the config is JSON and the weights are safetensors. Writing uses peft's own config classes
(the exporter imports peft inside the function), so the file says what peft's ``save_pretrained`` would.
The scratch parameter names are peft's minus its adapter name: ``base.<module>.<tensor>`` here is
``base_model.model.<module>.<tensor>`` in the file.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import torch

from ..errors import UsageError
from ..files import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME
from ..weights import load_tensors

PEFT_KEY_PREFIX = "base_model.model."  # how peft names a layer's tensors in adapter_model.safetensors
SCRATCH_PREFIX = "base."  # the frozen base inside a DeltaModel


def peft_key(scratch_name: str) -> str:
    """``base.<module>.<tensor>`` -> ``base_model.model.<module>.<tensor>``."""
    return PEFT_KEY_PREFIX + scratch_name.removeprefix(SCRATCH_PREFIX)


def scratch_name(key: str) -> str:
    """``base_model.model.<module>.<tensor>`` -> ``base.<module>.<tensor>``."""
    return SCRATCH_PREFIX + key.removeprefix(PEFT_KEY_PREFIX)


def write_peft_adapter(directory, peft_config, weights: dict[str, torch.Tensor]) -> None:
    """Write ``peft_config`` (a peft config object, marked for inference as peft's ``save_pretrained`` writes it) and
    ``weights`` (already under peft's keys) as a peft adapter folder."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    peft_config.inference_mode = True
    peft_config.save_pretrained(str(directory))
    tensors = {key: tensor.detach().contiguous().cpu() for key, tensor in weights.items()}
    save_file(tensors, os.path.join(directory, PEFT_WEIGHTS_NAME), {"format": "pt"})


class PeftAdapter(NamedTuple):
    """A peft adapter folder as read from disk."""

    config: dict
    weights: dict[str, torch.Tensor]
    config_path: str
    weights_path: str


def read_peft_adapter(directory, peft_type: str, method: str) -> PeftAdapter:
    """The peft adapter folder ``directory``; a :class:`UsageError` when it is not one, holds another kind of adapter
    (``peft_type`` is peft's name, e.g. ``"IA3"``; ``method`` ours) or a damaged file."""
    directory = str(directory)
    config_path, weights_path = (os.path.join(directory, name) for name in (PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME))
    if not os.path.isfile(config_path) or not os.path.isfile(weights_path):
        raise UsageError(
            f"{directory} is not a peft adapter folder: it needs {PEFT_CONFIG_NAME} and {PEFT_WEIGHTS_NAME} "
            f"(save the PeftModel with save_pretrained(..., safe_serialization=True))"
        )
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{config_path} is not valid JSON ({error}); save the adapter again") from None
    if config.get("peft_type") != peft_type:
        raise UsageError(
            f"{config_path} holds a {config.get('peft_type')} adapter, not {method}; import it with the method it "
            f"belongs to"
        )
    if config.get("task_type") not in (None, "SEQ_2_SEQ_LM"):
        raise UsageError(
            f"{config_path} is an adapter for task_type {config.get('task_type')!r}; this project's models are "
            f"seq2seq (SEQ_2_SEQ_LM)"
        )
    return PeftAdapter(config, load_tensors(weights_path), config_path, weights_path)


def check_adapter_keys(adapter: PeftAdapter, tensor_names: tuple[str, ...], method: str) -> None:
    """Every key must be ``base_model.model.<module>.<one of tensor_names>``: what peft writes for ``method``."""
    suffixes = tuple(f".{name}" for name in tensor_names)
    strange = sorted(key for key in adapter.weights
                     if not key.startswith(PEFT_KEY_PREFIX) or not key.endswith(suffixes))
    if strange:
        raise UsageError(f"{adapter.weights_path} has keys a peft {method} adapter does not write, e.g. {strange[0]}")


def saved_target_modules(adapter: PeftAdapter) -> list[str] | str:
    """The adapter's ``target_modules`` as saved (a list of names or one expression); refused when missing."""
    targets = adapter.config.get("target_modules")
    if not targets:
        raise UsageError(f"{adapter.config_path} names no target_modules; save the adapter with peft")
    return saved_targets(targets)


def load_adapter_weights(model, adapter: PeftAdapter) -> None:
    """Copy the adapter's tensors into the scratch ``model`` (a DeltaModel), refusing wrong names or shapes."""
    model.load_delta_state_dict({scratch_name(k): t for k, t in adapter.weights.items()}, source=adapter.weights_path)


def refuse_unsupported_fields(config: dict, plain: dict, config_path: str) -> None:
    """Refuse a config whose fields in ``plain`` hold other values than the ones the scratch method reproduces."""
    unsupported = [
        f"{key}={config[key]!r}" for key, value in plain.items() if config.get(key) not in (None, value, {}, [])
    ]
    if unsupported:
        raise UsageError(
            f"{config_path} uses {', '.join(unsupported)}, which the scratch implementation does not reproduce; use "
            f"it with --implementation library"
        )


def saved_targets(targets) -> list[str] | str:
    """A ``target_modules`` value as peft saved it: a regular expression (string) or a list of names, unchanged."""
    return targets if isinstance(targets, str) else sorted(targets)
