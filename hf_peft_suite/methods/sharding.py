"""Reading a base's weights whole while a sharding engine holds them in pieces (DeepSpeed ZeRO-3).

Under ZeRO-3, ``from_pretrained`` builds the base inside ``deepspeed.zero.Init``: every parameter is partitioned across
the processes as it is created, so its ``data`` is empty (``numel() == 0``) and its full size and shape live in
``ds_numel`` and ``ds_shape`` (:func:`~hf_peft_suite.compat.full_numel`, :func:`~hf_peft_suite.compat.full_shape`).
A method that reads a base weight when it is built (DoRA's magnitude ``||W0||``, a prompt initialised from vocabulary
embeddings) must gather it first (:func:`gathered`); a layer whose forward reads a weight of another module (DoRA's
``W0`` outside the base layer's own call) must ask DeepSpeed to keep it gathered during its own forward
(:func:`keep_gathered_in_forward`). Without ZeRO-3 both do nothing and import nothing.

FSDP needs nothing here: the model is built before FSDP wraps it, and the delta is found by name
(:meth:`~hf_peft_suite.methods.delta.DeltaModel.delta_parameter_names` removes the wrappers' name segments).
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import nn

from ..compat import clean_parameter_name, full_shape, is_partitioned


@contextlib.contextmanager
def gathered(parameters: Iterable[nn.Parameter]):
    """Within the block, every partitioned parameter among ``parameters`` holds its full data (read-only: changes are
    not written back). Every process must enter it, since gathering is a collective."""
    partitioned = [parameter for parameter in parameters if is_partitioned(parameter)]
    if not partitioned:
        yield
        return
    import deepspeed  # installed wherever parameters are partitioned

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


def keep_gathered_in_forward(module: nn.Module, parameter: nn.Parameter) -> None:
    """Have ZeRO-3 gather ``parameter`` (owned by another module) for the whole of ``module``'s forward and backward.

    ZeRO-3 gathers a module's own parameters when that module runs and releases them after; a forward that reads
    a submodule's weight once the submodule has returned would find it empty. ``register_external_parameter`` is
    DeepSpeed's remedy. Nothing happens when ``parameter`` is not partitioned."""
    if is_partitioned(parameter):
        import deepspeed

        deepspeed.zero.register_external_parameter(module, parameter)


def full_shape_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s parameters by their unwrapped names, as tensors of their full shapes on the ``meta`` device: what a
    checkpoint must match, also when ZeRO-3 has partitioned them (for checks that compare shapes, not values)."""
    return {clean_parameter_name(name): torch.empty(full_shape(parameter), dtype=parameter.dtype, device="meta")
            for name, parameter in model.named_parameters()}
