"""The linear layers a method adapts (LoRA, (IA)³), chosen the same way in both implementations, and what the
hand-written layers that wrap them share: the frozen layer, merging, and the refusal to merge into a tied weight.

A target specification, as peft takes one (``peft.tuners.tuners_utils.check_target_module_exists``):

* ``None``: the family's default (:mod:`~hf_peft_suite.methods.architectures`, peft's per-model tables);
* a list of names: a module matches when its full name equals a name or ends with ``.<name>`` (so ``q`` and the
  dotted ``EncDecAttention.q`` both work);
* one regular expression (a string): a module matches when the expression matches its *whole* name
  (``re.fullmatch``), e.g. ``.*decoder.*(q|v)``. On the command line, a single entry holding any of ``^$*+?()[]{}|\\``
  is taken as one;
* ``all-linear``: every ``nn.Linear`` but the LM head, resolved here to the list of their names.

Both implementations are built from the same resolved specification, and it is saved as given (list or expression),
so export and import keep it unchanged.
"""

from __future__ import annotations

import copy
import re
from typing import Iterator

import torch
from torch import nn

from ..errors import UsageError
from .architectures import family_of
from .delta import DeltaModel

ALL_LINEAR = "all-linear"
REGEX_CHARACTERS = frozenset("^$*+?()[]{}|\\")


def is_regex(entry: str) -> bool:
    return any(character in REGEX_CHARACTERS for character in entry)


def parse_target_modules(target_modules, option: str) -> list[str] | str | None:
    """A command-line or JSON value as a specification: ``None`` (the family's default), a list of names or one
    regular expression. ``"q,v"``, ``["q,v"]`` and ``["q", "v"]`` give ``["q", "v"]``; ``all-linear`` stands alone."""
    if target_modules is None:
        return None
    entries = [target_modules] if isinstance(target_modules, str) else [str(entry) for entry in target_modules]
    expressions = [entry for entry in entries if is_regex(entry)]
    if expressions:
        if len(entries) > 1:
            raise UsageError(
                f"--{option} {' '.join(entries)}: a regular expression ({expressions[0]!r}) must stand alone; put "
                f"the alternatives inside it, e.g. '.*(q|v)'"
            )
        try:
            re.compile(entries[0])
        except re.error as error:
            raise UsageError(f"--{option} {entries[0]!r} is not a valid regular expression ({error})") from None
        return entries[0]
    names = [name.strip() for entry in entries for name in entry.split(",") if name.strip()]
    if not names:
        raise UsageError(f"--{option} is empty; name the linear layers to adapt (e.g. q v), or use all-linear")
    if ALL_LINEAR in names and len(names) > 1:
        raise UsageError(f"--{option} {' '.join(names)}: use all-linear alone, or list the layers by name")
    return names


def describe(targets: list[str] | str) -> str:
    return targets if isinstance(targets, str) else " ".join(targets)


def module_matches(module_name: str, targets: list[str] | str) -> bool:
    """peft's rule: ``re.fullmatch`` for an expression; for a list, the full name equals a target or ends with
    ``.<target>``."""
    if isinstance(targets, str):
        return re.fullmatch(targets, module_name) is not None
    return any(module_name == target or module_name.endswith(f".{target}") for target in targets)


def linear_layer_names(model: nn.Module, exclude: nn.Module | None = None) -> list[str]:
    """The distinct last components of the names of ``model``'s ``nn.Linear`` layers but ``exclude``."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, nn.Linear) and module is not exclude})


def resolve_target_modules(model: nn.Module, targets, method: str, default: str) -> list[str] | str:
    """The explicit specification both implementations get. ``None`` becomes the family's default (the attribute
    ``default`` of its :class:`~hf_peft_suite.methods.architectures.Family`, e.g. ``lora_targets``); ``all-linear``
    every linear layer's name (last component) but the LM head's, as peft's ``all-linear``; others stay as given."""
    if targets is None:
        return list(getattr(family_of(model, method, "default target layers"), default))
    if targets != [ALL_LINEAR]:
        return targets
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return linear_layer_names(model, exclude=output_embeddings)


def find_target_modules(model: nn.Module, targets: list[str] | str, option: str, wrapper: type) -> list[str]:
    """Full names (in ``named_modules`` order) of the linear layers ``targets`` selects; a :class:`UsageError` if it
    selects none, selects something that is not a plain ``nn.Linear``, or a layer already wrapped by ``wrapper``."""
    found = []
    for name, module in model.named_modules():
        if not name or not module_matches(name, targets):
            continue
        if isinstance(module, wrapper):
            raise UsageError(
                f"{name} already has {getattr(module, 'method_name', type(module).__name__)}; build the method on a "
                f"freshly loaded base model, not on an adapted one"
            )
        if type(module) is not nn.Linear:
            raise UsageError(
                f"--{option} {describe(targets)} selects {name}, a {type(module).__name__}; this method adapts "
                f"nn.Linear layers only: name linear layers (e.g. q v) or use all-linear"
            )
        found.append(name)
    if not found:
        raise UsageError(
            f"--{option} {describe(targets)} matches no module of {type(model).__name__}; its linear layers are "
            f"named {', '.join(linear_layer_names(model))}: choose from those, or use all-linear"
        )
    return found


def replace_module(model: nn.Module, name: str, new_module: nn.Module) -> None:
    """Put ``new_module`` where ``model``'s submodule ``name`` (dotted path) is."""
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, new_module)


def adapter_parameter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """Adapter weights stay fp32 over a half-precision base (as peft's ``autocast_adapter_dtype=True``)."""
    return torch.float32 if base_dtype in (torch.float16, torch.bfloat16) else base_dtype


# --------------------------------------------------------------------------------------- the wrapped linear layer
class AdaptedLinear(nn.Module):
    """A frozen ``nn.Linear`` (``self.base_layer``, the original layer, not a copy) plus a method's trained tensors.

    Subclasses implement ``forward``, ``adapter_params`` and :meth:`merged_weights`. ``weight`` and ``bias`` read
    through to the frozen layer (models read their linear layers' ``.weight``, e.g. T5's feed-forward for its dtype).
    """

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.merged = False
        self._unmerged: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def merged_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias of one plain linear layer computing what this layer computes."""
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        """Write :meth:`merged_weights` into the frozen layer; forward then runs the plain layer only."""
        if self.merged:
            raise RuntimeError("this layer is already merged; call unmerge() before merging again")
        weight, bias = self.merged_weights()
        layer = self.base_layer
        self._unmerged = (layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone())
        layer.weight.copy_(weight.to(layer.weight.dtype))
        if bias is not None:
            layer.bias.copy_(bias.to(layer.bias.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the frozen weights back exactly as they were before :meth:`merge`."""
        if not self.merged:
            raise RuntimeError("this layer is not merged; there is nothing to unmerge")
        weight, bias = self._unmerged
        self.base_layer.weight.copy_(weight)
        if bias is not None:
            self.base_layer.bias.copy_(bias)
        self._unmerged = None
        self.merged = False


def adapted_layers(model: nn.Module, layer_class: type = AdaptedLinear) -> Iterator[tuple[str, AdaptedLinear]]:
    """``(name, layer)`` for every ``layer_class`` in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, layer_class):
            yield name, module


def check_untied(model: nn.Module, name: str, layer: AdaptedLinear) -> None:
    """Refuse to merge into a weight that other modules share (a tied LM head: t5-small's ``lm_head`` *is* ``shared``,
    the input embeddings): the merge would change them too, and the merged model would compute something else."""
    sharing = [
        other for other, parameter in model.named_parameters(remove_duplicate=False)
        if parameter is layer.base_layer.weight and not other.startswith(f"{name}.")
    ]
    if sharing:
        raise UsageError(
            f"cannot merge into {name}: its weight is tied to {', '.join(sharing)} (tie_word_embeddings), so the "
            f"merge would change those too and the merged model would no longer compute what the adapted one does; "
            f"keep this layer unmerged, or adapt untied layers only"
        )


class AdaptedLinearModel(DeltaModel):
    """A :class:`~hf_peft_suite.methods.delta.DeltaModel` whose delta lives in :class:`AdaptedLinear` layers of the
    base (LoRA, (IA)³): merging into the base, and :meth:`merge_and_unload` to a plain model."""

    layer_class: type[AdaptedLinear] = AdaptedLinear

    def adapted_layers(self) -> Iterator[tuple[str, AdaptedLinear]]:
        """``(name in self.base, layer)`` for every adapted layer."""
        return adapted_layers(self.base, self.layer_class)

    def merge(self) -> None:
        """Fold every layer's update into its frozen weight, in place: inference at the base model's cost. Refused,
        before anything changes, when a layer's weight is tied to another module's."""
        layers = list(self.adapted_layers())
        for name, layer in layers:
            check_untied(self.base, name, layer)
        for _, layer in layers:
            layer.merge()

    def unmerge(self) -> None:
        """Undo :meth:`merge` (the frozen weights come back exactly)."""
        for _, layer in self.adapted_layers():
            layer.unmerge()

    @property
    def merged(self) -> bool:
        return any(layer.merged for _, layer in self.adapted_layers())

    def merge_and_unload(self):
        """A new plain model of the base's class (``T5ForConditionalGeneration``, ...) with the updates folded into
        its weights; it saves and loads like any model of that class. This model is left unchanged (the base is
        copied once, unlike peft's ``merge_and_unload``, which consumes its PeftModel). Refused for tied weights."""
        for name, layer in self.adapted_layers():
            check_untied(self.base, name, layer)
        plain = copy.deepcopy(self.base)
        for name, layer in list(adapted_layers(plain, self.layer_class)):
            if not layer.merged:
                layer.merge()
            replace_module(plain, name, layer.base_layer)
        return plain.requires_grad_(True)
