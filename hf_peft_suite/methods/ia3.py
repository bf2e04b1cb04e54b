"""(IA)³ (Infused Adapter by Inhibiting and Amplifying Inner Activations), from scratch and with HF ``peft``.

Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning",
https://arxiv.org/abs/2205.05638. Three learned vectors rescale a frozen Transformer's inner activations, element by
element: the attention keys and values, and the feed-forward activations::

    softmax(Q (l_k ⊙ K)^T) (l_v ⊙ V)          (l_ff ⊙ γ(W_1 x)) W_2

They start at ones, so the adapted model starts equal to the base. Here, as in peft, each vector belongs to one
linear layer and is applied there:

* an ordinary target (a key or value projection): its **output** is rescaled, ``y = l ⊙ (W x + b)``, ``l`` with one
  entry per output feature;
* a feed-forward target (the layer after the activation: T5's ``wo``): its **input** is rescaled,
  ``y = W (l ⊙ x) + b``, ``l`` with one entry per input feature (the activations ``γ(W_1 x)``).

Trainable parameters: the output width of each ordinary target plus the input width of each feed-forward target.
t5-small with peft's T5 defaults (``k``, ``v`` in all 18 attention blocks, ``wo`` in all 12 feed-forward blocks):
``18 * 2 * 512 + 12 * 2048 = 43,008``.

Two implementations, configured by the same :class:`IA3Options`:

* ``scratch``: :class:`IA3Linear` wraps each targeted ``nn.Linear``; :class:`IA3Model` (a
  :class:`~hf_peft_suite.methods.delta.DeltaModel`) holds the base and saves only the vectors. No ``peft`` import.
* ``library``: ``peft.get_peft_model`` with the ``IA3Config`` :func:`peft_ia3_config` builds from the same resolved
  targets and feed-forward modules.

Parity is designed in from peft's ``tuners/ia3/layer.py`` (0.21): the vector has the shape peft gives it
(``(d_out, 1)`` or ``(1, d_in)``, drawn with ``torch.randn`` and then set to ones, so the random generator moves as
in peft), the same casts, the same multiplication order, and peft's name minus the adapter name
(``<module>.ia3_l``). Feed-forward targets are recognised by peft's rule (a list: the module's name *ends with* an
entry; an expression: ``re.fullmatch``). Merging multiplies the weight's rows (ordinary: and the bias) or columns
(feed-forward) by ``l``; targets default to the family's (peft's table: :mod:`~hf_peft_suite.methods.architectures`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn

from ..errors import UsageError
from .architectures import FAMILIES, model_type_of
from .base import Method, Recommended
from .delta import DeltaConfig, attach_base, delta_config_kwargs, register_delta_model
from .formats import PEFT_LIBRARY, SCRATCH_DELTA
from .peft_files import (
    check_adapter_keys,
    load_adapter_weights,
    peft_key,
    read_peft_adapter,
    refuse_unsupported_fields,
    saved_target_modules,
    saved_targets,
    write_peft_adapter,
)
from .targets import (
    AdaptedLinear,
    AdaptedLinearModel,
    adapter_parameter_dtype,
    describe,
    find_target_modules,
    parse_target_modules,
    replace_module,
    resolve_target_modules,
)

TARGETS_OPTION = "ia3_target_modules"
FEEDFORWARD_OPTION = "ia3_feedforward_modules"
IA3_PARAMETER_NAME = "ia3_l"


@dataclass
class IA3Options:
    """Options of ``--method ia3``, shared by both implementations."""

    ia3_target_modules: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Linear layers whose activations (IA)³ rescales: names, dotted suffixes, one regular expression, "
            "or all-linear, as for --lora_target_modules. Default: the model family's (peft's table): k v wo for "
            "T5, k v wi_1 for mT5, q_proj v_proj fc2 for BART."
        },
    )
    ia3_feedforward_modules: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Which of the targets are feed-forward layers, whose *input* (the activations) is rescaled "
            "instead of their output: names among the targets (a module ending with one matches, peft's rule), one "
            "regular expression, or none. Default: the family's among the targets (wo for T5, none for mT5, fc2 "
            "for BART)."
        },
    )

    def __post_init__(self):
        self.ia3_target_modules = parse_target_modules(self.ia3_target_modules, TARGETS_OPTION)
        given = self.ia3_feedforward_modules
        if given is not None and ([given] if isinstance(given, str) else list(given)) in ([], ["none"]):
            self.ia3_feedforward_modules = []  # explicitly none
        elif given is not None:
            self.ia3_feedforward_modules = parse_target_modules(self.ia3_feedforward_modules, FEEDFORWARD_OPTION)
            if self.ia3_feedforward_modules == ["all-linear"]:
                raise UsageError("--ia3_feedforward_modules takes layer names or an expression, not all-linear")


def is_feedforward(module_name: str, feedforward: list[str] | str) -> bool:
    """peft's rule (``IA3Model._check_target_module_feedforward``): ``re.fullmatch`` for an expression; for a list,
    the module's full name ends with an entry (note: no ``.`` boundary, unlike the target rule)."""
    if isinstance(feedforward, str):
        return re.fullmatch(feedforward, module_name) is not None
    return any(module_name.endswith(entry) for entry in feedforward)


# ---------------------------------------------------------------------------------------------- the layer
class IA3Linear(AdaptedLinear):
    """``y = l ⊙ (W x + b)`` (``feedforward=False``) or ``y = W (l ⊙ x) + b`` (``feedforward=True``) around a frozen
    ``nn.Linear`` (Liu et al. 2022, section 3.3).

    Args:
        base_layer: the layer to adapt; it is kept (``self.base_layer``), not copied, and frozen.
        feedforward: rescale the input (the feed-forward activations) instead of the output.

    Trainable parameter (:meth:`adapter_params`): ``ia3_l``, ``(d_out, 1)`` or ``(1, d_in)``, starting at ones.
    """

    method_name = "(IA)³"

    def __init__(self, base_layer: nn.Linear, feedforward: bool = False):
        super().__init__(base_layer)
        if not isinstance(feedforward, bool):
            raise ValueError(f"feedforward must be True or False, got {feedforward!r}")
        self.feedforward = feedforward
        shape = (1, base_layer.in_features) if feedforward else (base_layer.out_features, 1)
        vector = torch.randn(shape)  # peft's draw, so the random generator moves as in peft; then ones
        nn.init.constant_(vector, 1.0)
        weight = base_layer.weight
        self.ia3_l = nn.Parameter(vector.to(device=weight.device, dtype=adapter_parameter_dtype(weight.dtype)))

    def adapter_params(self) -> list[str]:
        """The trained parameter (the :class:`~hf_peft_suite.methods.delta.DeltaModule` protocol)."""
        return [IA3_PARAMETER_NAME]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        scaling = self.ia3_l.flatten()
        if self.feedforward:
            previous_dtype = x.dtype
            return self.base_layer((x.to(scaling.dtype) * scaling).to(previous_dtype))
        result = self.base_layer(x)
        return (result * scaling).to(result.dtype)

    def merged_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Columns of W times ``l`` (feed-forward), or rows of W and the bias times ``l``."""
        weight, bias = self.base_layer.weight, self.base_layer.bias
        if self.feedforward:
            return weight * self.ia3_l, None
        return weight * self.ia3_l, None if bias is None else bias * self.ia3_l.reshape(bias.shape)

    def extra_repr(self) -> str:
        return f"feedforward={self.feedforward}, merged={self.merged}"


def inject_ia3(model: nn.Module, targets: list[str] | str, feedforward: list[str] | str) -> list[str]:
    """Replace every targeted ``nn.Linear`` of ``model`` (in place) by an :class:`IA3Linear` around it, in
    ``named_modules`` order (as peft). Returns the full names of the wrapped layers."""
    names = find_target_modules(model, targets, TARGETS_OPTION, AdaptedLinear)
    for name in names:
        replace_module(model, name, IA3Linear(model.get_submodule(name), is_feedforward(name, feedforward)))
    return names


# -------------------------------------------------------------------------------------- the scratch wrapper
class IA3Config(DeltaConfig):
    """A frozen base model plus (IA)³ vectors: the base, and the resolved target and feed-forward modules."""

    model_type = "hf_peft_suite_ia3"

    def __init__(
        self,
        ia3_target_modules: Union[list[str], str, None] = None,
        ia3_feedforward_modules: Union[list[str], str, None] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.ia3_target_modules = ia3_target_modules
        self.ia3_feedforward_modules = ia3_feedforward_modules if ia3_feedforward_modules is not None else []


class IA3Model(AdaptedLinearModel):
    """A frozen seq2seq base whose targeted linear layers are :class:`IA3Linear`; only the vectors are trained and
    saved (``base.<module>.ia3_l``). ``merge``/``unmerge``/``merge_and_unload`` as for LoRA."""

    config_class = IA3Config
    layer_class = IA3Linear

    def __init__(self, config: IA3Config, base_model=None):
        super().__init__(config, base_model)
        if not config.ia3_target_modules:
            raise UsageError("this (IA)³ config names no target modules; build it with build_scratch")
        self.ia3_module_names = inject_ia3(self.base, config.ia3_target_modules, config.ia3_feedforward_modules)


register_delta_model(IA3Config, IA3Model)


# ------------------------------------------------------------------------------------------------- builders
def resolved_modules(base_model, options: IA3Options | None) -> tuple[list[str] | str, list[str] | str]:
    """The explicit ``(targets, feed-forward modules)`` both implementations are built with.

    Without ``--ia3_feedforward_modules``: the family's feed-forward modules that are among the targets (all of them
    when the targets are an expression; none for a family without a table). peft requires a list of feed-forward
    modules to be a subset of a list of targets; a given list that is not is refused here, with the fix.
    """
    options = options or IA3Options()
    targets = resolve_target_modules(base_model, options.ia3_target_modules, "ia3", "ia3_targets")
    feedforward = options.ia3_feedforward_modules
    if feedforward is None:
        family = FAMILIES.get(model_type_of(base_model))
        defaults = list(family.ia3_feedforward) if family else []
        feedforward = defaults if isinstance(targets, str) else [name for name in defaults if name in targets]
    elif isinstance(feedforward, list) and isinstance(targets, list) and not set(feedforward) <= set(targets):
        stray = sorted(set(feedforward) - set(targets))
        raise UsageError(
            f"--{FEEDFORWARD_OPTION} {describe(feedforward)} names {', '.join(stray)}, which --{TARGETS_OPTION} "
            f"{describe(targets)} does not list; name the feed-forward modules among the targets (peft's rule)"
        )
    return targets, feedforward


def build_scratch(base_model, options: IA3Options | None = None, tokenizer=None) -> IA3Model:
    """Wrap ``base_model`` (frozen) in an :class:`IA3Model`."""
    targets, feedforward = resolved_modules(base_model, options)
    config = IA3Config(ia3_target_modules=targets, ia3_feedforward_modules=feedforward,
                       **delta_config_kwargs(base_model))
    return IA3Model(config, base_model)


def peft_ia3_config(targets, feedforward, base_model_name_or_path: str | None = None):
    """peft's ``IA3Config`` with these explicit targets and feed-forward modules."""
    from peft import IA3Config as PeftIA3Config
    from peft import TaskType

    return PeftIA3Config(
        task_type=TaskType.SEQ_2_SEQ_LM,
        target_modules=targets if isinstance(targets, str) else list(targets),
        feedforward_modules=feedforward if isinstance(feedforward, str) else list(feedforward),
        base_model_name_or_path=base_model_name_or_path,
    )


def build_library(base_model, options: IA3Options | None = None, tokenizer=None):
    """``peft.get_peft_model(base_model, IA3Config(...))``: a ``PeftModelForSeq2SeqLM``."""
    from peft import get_peft_model

    targets, feedforward = resolved_modules(base_model, options)
    find_target_modules(base_model, targets, TARGETS_OPTION, AdaptedLinear)  # the scratch path's UsageError
    return get_peft_model(base_model, peft_ia3_config(targets, feedforward))


# ------------------------------------------------------------------------------------ peft-format interop
def export_to_peft(model: IA3Model, directory) -> None:
    """Write ``model``'s vectors as a peft (IA)³ adapter that ``PeftModel.from_pretrained(base, directory)`` loads."""
    if not isinstance(model, IA3Model):
        raise UsageError(f"export_to_peft takes an IA3Model (scratch (IA)³), not {type(model).__name__}")
    config = model.config
    peft_config = peft_ia3_config(config.ia3_target_modules, config.ia3_feedforward_modules,
                                  config.base_model_name_or_path)
    write_peft_adapter(directory, peft_config, {peft_key(n): t for n, t in model.delta_state_dict().items()})


# peft IA3Config fields that change what is computed or saved, with the value the scratch (IA)³ reproduces.
PEFT_PLAIN_IA3_FIELDS = {"fan_in_fan_out": False, "modules_to_save": None, "exclude_modules": None}


def import_from_peft(directory, base_model=None) -> IA3Model:
    """An :class:`IA3Model` from a peft (IA)³ adapter folder, onto ``base_model`` or the base the adapter names.

    Targets and feed-forward modules are used as saved (names or expressions). peft is not needed to import.
    """
    adapter = read_peft_adapter(directory, "IA3", "(IA)³")
    refuse_unsupported_fields(adapter.config, PEFT_PLAIN_IA3_FIELDS, adapter.config_path)
    check_adapter_keys(adapter, (IA3_PARAMETER_NAME,), "(IA)³")
    config = IA3Config(
        ia3_target_modules=saved_target_modules(adapter),
        ia3_feedforward_modules=saved_targets(adapter.config.get("feedforward_modules") or []),
        base_model_name_or_path=adapter.config.get("base_model_name_or_path"),
    )
    base_model = attach_base(config, base_model, delta_source=str(directory))
    model = IA3Model(config, base_model)
    load_adapter_weights(model, adapter)
    return model


METHOD = Method(
    name="ia3",
    options=IA3Options,
    recommended=Recommended(
        source="Liu et al. 2022 (T-Few, arXiv:2205.05638, section 3.3 and appendix): (IA)³ vectors on keys, values "
        "and feed-forward activations, trained with Adafactor at a learning rate of 3e-3 with 60 warm-up steps of "
        "1,000 (6%) and linear decay. Targets: the family's defaults (peft's table: k v wo for T5).",
        settings={"learning_rate": 3e-3, "optim": "adafactor", "lr_scheduler_type": "linear", "warmup_ratio": 0.06},
    ),
    build_scratch=build_scratch,
    scratch_format=SCRATCH_DELTA,
    build_library=build_library,
    **PEFT_LIBRARY,
)
