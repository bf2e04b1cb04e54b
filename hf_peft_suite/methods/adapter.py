"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021), from scratch and with AdapterHub ``adapters``,
on T5-layout models and BART.

A bottleneck adapter is a small residual MLP inserted into every Transformer block of a frozen model::

    A(x) = scaling * (W_up f(W_down x + b_down) + b_up)        W_down: m x d,  W_up: d x m,  m = d / reduction_factor
    adapter(x) = x + A(x)

Only ``W_down, b_down, W_up, b_up`` are trained. Where the adapter sits in a T5 block is what distinguishes the two
AdapterHub configurations this module reproduces (``h`` is the residual stream entering a sublayer, ``s`` the
sublayer's output after T5's dropout, ``LN`` T5's pre-norm; T5 has no post-norm, so AdapterHub's "original layer
norm" steps are plain additions here):

* ``seq_bn`` (Pfeiffer et al. 2021, https://arxiv.org/abs/2005.00247), after the feed-forward sublayer only. The
  adapter reads the residual stream *after* the sublayer's residual addition and adds its own residual to it::

      s = dropout(FF(LN(h)));   y = h + s;   out = y + A(y)

* ``double_seq_bn`` (Houlsby et al. 2019, https://arxiv.org/abs/1902.00751), after the self-attention sublayer and
  after the feed-forward sublayer (not after cross-attention). The adapter reads the sublayer's output *before*
  T5's residual addition::

      s = dropout(Sublayer(LN(h)));   out = h + (s + A(s))

These are the equations AdapterHub's ``Adapter.pre_forward`` / ``forward`` / ``post_forward`` reduce to for
``SeqBnConfig()`` (``original_ln_before=True``) and ``DoubleSeqBnConfig()`` (``original_ln_before=False``) when T5
passes ``layer_norm=None`` (``adapters/models/t5/modeling_t5.py``). The scratch implementation attaches each adapter
as a child ``adapter`` of the T5 sublayer AdapterHub puts it in (``block.layer[0]``: self-attention,
``block.layer[-1]``: feed-forward) and applies it with a forward hook: on the feed-forward sublayer's output
(``seq_bn``) or on the sublayer's ``dropout`` output (``double_seq_bn``), so the base model's code and parameter names
are untouched.

On BART (post-norm: each sublayer ends in ``LN(h + s)``, and AdapterHub's ``layer_norm`` argument is that LayerNorm)
the same two configurations reduce to other equations (``adapters/models/bart/modeling_bart.py``), which the scratch
adapters reproduce from a hook on each sublayer's LayerNorm (:class:`PostNormHooks`), kept as
``attention_adapter`` / ``output_adapter`` of the layer where AdapterHub keeps ``attention_adapters`` /
``output_adapters``::

    seq_bn:          out = LN(h + s + A(LN(h + s)))
    double_seq_bn:   out = LN(h + s + A(s))

Which family a base belongs to, and where its sublayers are, comes from :mod:`~hf_peft_suite.methods.architectures`
(T5, T5 v1.1, mT5: the T5 layout; BART); other families are refused with the list of supported ones.

Trainable parameters: ``n_adapters * (2 * d * m + m + d)``, with ``n_adapters`` = encoder + decoder blocks (``seq_bn``)
or twice that (``double_seq_bn``). t5-small (d = 512, 6 + 6 blocks, reduction 16, m = 32): 33,312 per adapter, so
399,744 for ``seq_bn`` and 799,488 for ``double_seq_bn``.

Initialisation: AdapterHub's configs default to ``init_weights="bert"`` (every weight N(0, 0.02)), under which the
initial model is close to, but not equal to, the base. Both implementations here default to AdapterHub's
``"mam_adapter"`` init (He et al. 2022, https://arxiv.org/abs/2110.04366): ``W_down`` Kaiming-uniform, ``W_up`` and
both biases zero, so ``A(x) = 0`` and the initial model *is* the base. ``--adapter_init_weights bert`` gives
AdapterHub's default exactly.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from ..compat import average_loss_per_batch
from ..errors import UsageError
from ..files import ADAPTERHUB_CONFIG_NAME, ADAPTERHUB_TORCH_WEIGHTS_NAME, ADAPTERHUB_WEIGHTS_NAME
from ..weights import check_saved_config, compare_shapes, load_tensors, tensor_shapes
from .architectures import FAMILIES, Family, family_of
from .base import Method, Recommended, library_problem
from .delta import DeltaConfig, DeltaModel, delta_config_kwargs, register_delta_model
from .formats import SCRATCH_DELTA, ArtifactFormat

# ------------------------------------------------------------------------------------------------------ placements


@dataclass(frozen=True)
class Placement:
    """Where one AdapterHub bottleneck configuration puts its adapters in a T5 block.

    Attributes:
        sublayers: the sublayers followed by an adapter: ``"self_attention"`` (``block.layer[0]``) and/or
            ``"feed_forward"`` (``block.layer[-1]``).
        reads_residual_stream: ``True``: the adapter reads ``y = h + s`` and returns ``y + A(y)`` (AdapterHub
            ``original_ln_before=True``); ``False``: it reads ``s`` and returns ``s + A(s)`` before T5 adds ``h``.
        default_non_linearity: the configuration's AdapterHub default.
    """

    sublayers: tuple[str, ...]
    reads_residual_stream: bool
    default_non_linearity: str


PLACEMENTS: dict[str, Placement] = {
    "seq_bn": Placement(("feed_forward",), True, "relu"),  # Pfeiffer et al. 2021
    "double_seq_bn": Placement(("self_attention", "feed_forward"), False, "swish"),  # Houlsby et al. 2019
}

# --------------------------------------------------------------------------------------------------------- options


@dataclass
class AdapterOptions:
    """Options of ``--method adapter``, shared by the scratch and the AdapterHub implementation."""

    adapter_config: str = field(
        default="seq_bn",
        metadata={
            "help": "AdapterHub bottleneck configuration: seq_bn (Pfeiffer: after the feed-forward sublayer of every "
            "block) or double_seq_bn (Houlsby: also after self-attention)",
            "choices": list(PLACEMENTS),
        },
    )
    adapter_reduction_factor: int = field(
        default=16, metadata={"help": "bottleneck width = d_model / reduction factor (must divide d_model)"}
    )
    adapter_non_linearity: Optional[str] = field(
        default=None,
        metadata={
            "help": "activation inside the bottleneck (a transformers ACT2FN name or leakyrelu); default: the "
            "configuration's own (relu for seq_bn, swish for double_seq_bn)"
        },
    )
    adapter_scaling: float = field(
        default=1.0, metadata={"help": "constant factor on the adapter's output before its residual addition"}
    )
    adapter_init_weights: str = field(
        default="mam_adapter",
        metadata={
            "help": "AdapterHub init: mam_adapter (up-projection zero: the initial model equals the base), bert "
            "(AdapterHub's default: all weights N(0, 0.02)) or houlsby (truncated normal, std 0.01)",
            "choices": ["mam_adapter", "bert", "houlsby"],
        },
    )


@dataclass(frozen=True)
class AdapterSettings:
    """Validated, fully resolved adapter options for one base model (what both implementations are built from)."""

    adapter_config: str
    reduction_factor: int
    bottleneck_size: int
    non_linearity: str
    scaling: float
    init_weights: str

    @property
    def placement(self) -> Placement:
        return PLACEMENTS[self.adapter_config]


def known_non_linearities() -> list[str]:
    """Activation names AdapterHub accepts for ``non_linearity`` (it looks them up in transformers' ``ACT2FN``)."""
    from transformers.activations import ACT2FN

    return sorted([*ACT2FN, "leakyrelu"])


def resolve_adapter_settings(options: AdapterOptions | None, d_model: int) -> AdapterSettings:
    """Check ``options`` against a base of width ``d_model``; a :class:`UsageError` names any problem and its fix."""
    options = options or AdapterOptions()
    if options.adapter_config not in PLACEMENTS:
        raise UsageError(
            f"unknown --adapter_config {options.adapter_config!r}; choose seq_bn (Pfeiffer: after the feed-forward "
            f"sublayer) or double_seq_bn (Houlsby: after self-attention and feed-forward)"
        )
    factor = options.adapter_reduction_factor
    if isinstance(factor, float) and factor.is_integer():
        factor = int(factor)
    divisors = [n for n in (2, 4, 8, 16, 32, 64) if d_model % n == 0]
    if not isinstance(factor, int) or isinstance(factor, bool) or factor <= 0:
        raise UsageError(
            f"--adapter_reduction_factor must be a positive integer, got {options.adapter_reduction_factor!r}; "
            f"the bottleneck has d_model / factor units (d_model is {d_model}): try one of {divisors}"
        )
    if d_model % factor != 0:
        raise UsageError(
            f"--adapter_reduction_factor {factor} does not divide the base model's d_model {d_model} (the "
            f"bottleneck would have {d_model / factor:.2f} units); choose a divisor of {d_model}, e.g. {divisors}"
        )
    non_linearity = (options.adapter_non_linearity or PLACEMENTS[options.adapter_config].default_non_linearity).lower()
    if non_linearity not in known_non_linearities():
        raise UsageError(
            f"unknown --adapter_non_linearity {options.adapter_non_linearity!r}; choose one of "
            f"{', '.join(known_non_linearities())}"
        )
    if options.adapter_init_weights not in ADAPTER_INITS:
        raise UsageError(
            f"unknown --adapter_init_weights {options.adapter_init_weights!r}; choose one of {', '.join(ADAPTER_INITS)}"
        )
    scaling = float(options.adapter_scaling)
    if not math.isfinite(scaling) or scaling == 0:
        raise UsageError(f"--adapter_scaling must be a finite non-zero number, got {options.adapter_scaling!r}")
    return AdapterSettings(
        adapter_config=options.adapter_config,
        reduction_factor=factor,
        bottleneck_size=d_model // factor,
        non_linearity=non_linearity,
        scaling=scaling,
        init_weights=options.adapter_init_weights,
    )


# ---------------------------------------------------------------------------------------------------- the module


def make_activation(name: str) -> nn.Module:
    """The activation module AdapterHub's ``Activation_Function_Class`` uses for ``name``."""
    if name == "leakyrelu":
        return nn.LeakyReLU()  # AdapterHub: nn.functional.leaky_relu with its default slope 0.01
    from transformers.activations import get_activation

    return get_activation(name)


class BottleneckAdapter(nn.Module):
    """``adapter(x) = x + scaling * up_proj(f(down_proj(x)))``: a residual bottleneck MLP (Houlsby et al. 2019).

    Applied as a forward hook (:meth:`apply_to_output`) on the T5 module whose output it adapts.

    Args:
        d_model: width of the hidden states it reads and writes.
        bottleneck_size: width ``m`` of the bottleneck (``d_model / reduction_factor``).
        non_linearity: activation ``f`` (a transformers ``ACT2FN`` name or ``leakyrelu``).
        scaling: constant factor on the adapter's output (He et al. 2022); 1.0 in AdapterHub's configs.
    """

    def __init__(self, d_model: int, bottleneck_size: int, non_linearity: str, scaling: float = 1.0):
        super().__init__()
        self.down_proj = nn.Linear(d_model, bottleneck_size)
        self.activation = make_activation(non_linearity)
        self.up_proj = nn.Linear(bottleneck_size, d_model)
        self.scaling = scaling

    def adapter_params(self) -> list[str]:
        """The trained parameters (the :class:`~hf_peft_suite.methods.delta.DeltaModule` protocol)."""
        return ["down_proj.weight", "down_proj.bias", "up_proj.weight", "up_proj.bias"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The order of operations is AdapterHub's, so results agree to the last bit where the inputs do.
        return x + self.delta(x)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``A(x) = scaling * up_proj(f(down_proj(x)))``, the adapter's contribution without its residual.

        Computed in the adapter's own dtype (fp32 over a half-precision base, as peft keeps its adapters) and returned
        in the input's: a base loaded with ``dtype=torch.bfloat16`` feeds bf16 hidden states to fp32 weights."""
        dtype = self.down_proj.weight.dtype
        return (self.up_proj(self.activation(self.down_proj(x.to(dtype)))) * self.scaling).to(x.dtype)

    def apply_to_output(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        """Forward hook: replace ``module``'s output ``x`` with ``x + A(x)``."""
        return self(output)


def init_up_projection_to_zero(adapter: BottleneckAdapter) -> None:
    """AdapterHub ``mam_adapter``: ``W_down`` Kaiming-uniform (a = sqrt 5), ``W_up`` and biases 0, so ``A(x) = 0``."""
    nn.init.kaiming_uniform_(adapter.down_proj.weight, a=math.sqrt(5))
    for tensor in (adapter.down_proj.bias, adapter.up_proj.weight, adapter.up_proj.bias):
        nn.init.zeros_(tensor)


def init_small_normal(adapter: BottleneckAdapter) -> None:
    """AdapterHub ``bert`` (its default): both weights N(0, 0.02), biases 0; ``A(x)`` is small but not zero."""
    for linear in (adapter.down_proj, adapter.up_proj):
        nn.init.normal_(linear.weight, mean=0.0, std=0.02)
        nn.init.zeros_(linear.bias)


def init_truncated_normal(adapter: BottleneckAdapter) -> None:
    """AdapterHub ``houlsby``: both weights N(0, 0.01) truncated to +-0.02, biases 0 (Houlsby et al. 2019)."""
    for linear in (adapter.down_proj, adapter.up_proj):
        nn.init.trunc_normal_(linear.weight, mean=0.0, std=1e-2, a=-2e-2, b=2e-2)
        nn.init.zeros_(linear.bias)


ADAPTER_INITS: dict[str, Callable[[BottleneckAdapter], None]] = {
    "mam_adapter": init_up_projection_to_zero,
    "bert": init_small_normal,
    "houlsby": init_truncated_normal,
}


def adapter_layers(base_model) -> tuple[Family, list[nn.Module]]:
    """The base's family and every encoder and decoder layer (T5 block, BART layer), or a :class:`UsageError` naming
    the families adapters can be placed in."""
    family = family_of(base_model, "adapter", "adapters are placed after a family's own sublayers")
    return family, family.layers(base_model)


class PostNormHooks:
    """The forward hooks that put bottleneck adapters into one post-norm layer (BART), where each sublayer ends in
    ``LN(h + s)`` (``h`` the residual stream entering it, ``s`` its output after dropout).

    A hook on each LayerNorm of the layer (:attr:`AdapterPlacement.layer_norms`) sees ``u = h + s`` and, where an
    adapter ``A`` follows that sublayer, returns AdapterHub's result instead of ``LN(u)``:

    * ``seq_bn`` (reads the residual stream): ``LN(u + A(LN(u)))``;
    * ``double_seq_bn`` (reads the sublayer's output): ``LN(u + A(s))`` with ``s = u - h``.

    Every LayerNorm's output is the residual stream of the next sublayer, so ``h`` is tracked from the layer's input
    on. The LayerNorm is applied functionally inside its own hook (calling the module would run the hook again).
    A plain object whose bound methods are the hooks, so a deep copy of the model gets hooks on its own copy.
    """

    def __init__(self, layer: nn.Module, adapters: dict[str, BottleneckAdapter], reads_residual_stream: bool):
        self.layer = layer
        self.adapters = adapters  # LayerNorm attribute name -> the adapter after that sublayer
        self.reads_residual_stream = reads_residual_stream
        self.residual: torch.Tensor | None = None

    def layer_input(self, module, args, kwargs) -> None:
        self.residual = args[0] if args else kwargs["hidden_states"]

    def after_norm(self, norm_name: str, norm: nn.LayerNorm, args, output: torch.Tensor) -> torch.Tensor:
        adapter = self.adapters.get(norm_name)
        if adapter is not None:
            summed = args[0]
            read = output if self.reads_residual_stream else summed - self.residual
            output = nn.functional.layer_norm(summed + adapter.delta(read), norm.normalized_shape, norm.weight,
                                              norm.bias, norm.eps)
        self.residual = output
        return output


def attach_adapters(base_model, settings: AdapterSettings) -> None:
    """Add a :class:`BottleneckAdapter` after each sublayer the placement names, in every layer of the base, where the
    family puts it (T5: as ``adapter`` of the sublayer; BART: as ``attention_adapter`` / ``output_adapter`` of the
    layer, AdapterHub's containers), and hook it in."""
    family, layers = adapter_layers(base_model)
    placement, where = settings.placement, family.adapters
    own_names = [our_container(family, name) for name in PLACEMENTS["double_seq_bn"].sublayers]
    if any(hasattr(module, own) for layer in layers for module in layer.modules() for own in own_names):
        raise UsageError(
            "this base model already carries bottleneck adapters (it was passed to build_scratch before); "
            "build each adapter model from a freshly loaded base model"
        )
    d_model = base_model.config.d_model
    for layer in layers:
        adapters, device = {}, next(layer.parameters()).device  # the layer's device (device_map may spread layers)
        for name in placement.sublayers:
            adapter = BottleneckAdapter(d_model, settings.bottleneck_size, settings.non_linearity, settings.scaling)
            ADAPTER_INITS[settings.init_weights](adapter)  # drawn on the CPU, as AdapterHub draws them
            adapters[name] = adapter.to(device)
        if where.style == "pre_norm":
            for name, adapter in adapters.items():
                sublayer = layer.layer[where.sublayers[name]]
                sublayer.adapter = adapter
                hooked = sublayer if placement.reads_residual_stream else sublayer.dropout
                hooked.register_forward_hook(adapter.apply_to_output)
            continue
        for name, adapter in adapters.items():
            setattr(layer, our_container(family, name), adapter)
        hooks = PostNormHooks(layer, {where.sublayers[name]: adapter for name, adapter in adapters.items()},
                              placement.reads_residual_stream)
        layer.register_forward_pre_hook(hooks.layer_input, with_kwargs=True)
        for norm_name in where.layer_norms:
            if hasattr(layer, norm_name):
                getattr(layer, norm_name).register_forward_hook(functools.partial(hooks.after_norm, norm_name))


def our_container(family: Family, placement_name: str) -> str:
    """The attribute holding the adapter: ``adapter`` on a T5 sublayer; AdapterHub's container name without its
    plural ``s`` on a BART layer (``attention_adapter``, ``output_adapter``)."""
    if family.adapters.style == "pre_norm":
        return "adapter"
    return family.adapters.adapterhub_containers[placement_name].removesuffix("s")


# ----------------------------------------------------------------------------------------- the scratch model


class BottleneckAdapterConfig(DeltaConfig):
    """A frozen T5 plus bottleneck adapters: the base, and the resolved :class:`AdapterOptions`."""

    model_type = "hf_peft_suite_adapter"

    def __init__(
        self,
        adapter_config: str = "seq_bn",
        reduction_factor: int = 16,
        non_linearity: str | None = None,
        scaling: float = 1.0,
        init_weights: str = "mam_adapter",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.adapter_config = adapter_config
        self.reduction_factor = reduction_factor
        self.non_linearity = non_linearity
        self.scaling = scaling
        self.init_weights = init_weights

    def adapter_options(self) -> AdapterOptions:
        return AdapterOptions(
            adapter_config=self.adapter_config,
            adapter_reduction_factor=self.reduction_factor,
            adapter_non_linearity=self.non_linearity,
            adapter_scaling=self.scaling,
            adapter_init_weights=self.init_weights,
        )


class BottleneckAdapterModel(DeltaModel):
    """A frozen T5 (``self.base``) with a :class:`BottleneckAdapter` in each place its configuration names.

    The adapters live inside the base's sublayers (``base.encoder.block.0.layer.1.adapter.down_proj.weight``, ...),
    where AdapterHub keeps its own (``encoder.block.0.layer.1.adapters.<name>.adapter_down.0.weight``).
    """

    config_class = BottleneckAdapterConfig

    def __init__(self, config: BottleneckAdapterConfig, base_model=None):
        super().__init__(config, base_model)
        self.settings = resolve_adapter_settings(config.adapter_options(), self.base.config.d_model)
        attach_adapters(self.base, self.settings)


register_delta_model(BottleneckAdapterConfig, BottleneckAdapterModel)


def build_scratch_adapter(base_model, options: AdapterOptions | None = None, tokenizer=None) -> BottleneckAdapterModel:
    """Freeze ``base_model`` and add hand-written bottleneck adapters as ``options`` say."""
    adapter_layers(base_model)
    settings = resolve_adapter_settings(options, base_model.config.d_model)
    config = BottleneckAdapterConfig(
        adapter_config=settings.adapter_config,
        reduction_factor=settings.reduction_factor,
        non_linearity=settings.non_linearity,
        scaling=settings.scaling,
        init_weights=settings.init_weights,
        **delta_config_kwargs(base_model),
    )
    return BottleneckAdapterModel(config, base_model)


# ------------------------------------------------------------------------------------- the AdapterHub model

LIBRARY_ADAPTER_NAME = "hf_peft_suite"
INSTALL_HINT = "pip install 'hf-peft-suite[adapters]' (AdapterHub adapters, which pins transformers 4.57)"


def _require_adapterhub():
    """Import AdapterHub ``adapters``, or raise a :class:`UsageError` saying how to install it."""
    problem = library_problem(METHOD)
    if problem:
        raise UsageError(problem)
    import adapters

    return adapters


def adapterhub_config(settings: AdapterSettings):
    """The AdapterHub ``SeqBnConfig`` / ``DoubleSeqBnConfig`` with the same options as the scratch adapters."""
    adapters = _require_adapterhub()
    return adapters.AdapterConfig.load(
        settings.adapter_config,
        reduction_factor=settings.reduction_factor,
        non_linearity=settings.non_linearity,
        scaling=settings.scaling,
        init_weights=settings.init_weights,
    )


def build_library_adapter(base_model, options: AdapterOptions | None = None, tokenizer=None):
    """``base_model`` with an AdapterHub bottleneck adapter added, active and the only trainable part."""
    adapters = _require_adapterhub()
    adapter_layers(base_model)
    settings = resolve_adapter_settings(options, base_model.config.d_model)
    adapters.init(base_model)
    base_model.add_adapter(LIBRARY_ADAPTER_NAME, config=adapterhub_config(settings))
    base_model.train_adapter(LIBRARY_ADAPTER_NAME)  # freezes everything else
    base_model.set_active_adapters(LIBRARY_ADAPTER_NAME)
    average_loss_per_batch(base_model)  # AdapterHub's T5 forward takes **kwargs
    return base_model


class AdapterHubFormat(ArtifactFormat):
    """An AdapterHub adapter: ``adapter_config.json`` and ``adapter.safetensors``, written by ``save_adapter`` (no LM
    head, no base: AdapterHub's ``save_pretrained`` would write the whole model)."""

    name = "AdapterHub adapter"
    weights_name = ADAPTERHUB_WEIGHTS_NAME
    # save_adapter takes no state dict: it reads the model's own parameters, which FSDP and ZeRO-3 hold in pieces
    # (the run is refused there; DDP and ZeRO-2 keep every parameter whole on every process).
    saves_from_given_state_dict = False

    def save(self, model, directory: str, state_dict: dict | None = None) -> None:
        model.save_adapter(directory, LIBRARY_ADAPTER_NAME, with_head=False, use_safetensors=True)

    def check(self, model, directory: str) -> None:
        """The saved configuration, names and shapes must be ``model``'s own adapter's."""
        current = model.adapters_config.get(LIBRARY_ADAPTER_NAME).to_dict()
        check_saved_config(os.path.join(directory, ADAPTERHUB_CONFIG_NAME), current, section="config")
        weights_path = os.path.join(directory, self.weights_name)
        if not os.path.isfile(weights_path):
            raise UsageError(f"it holds no {self.weights_name}, the weights this model saves")
        trainable = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
        compare_shapes(trainable, tensor_shapes(weights_path), weights_path)

    def load(self, model, directory: str) -> bool:
        """Copy the saved tensors into ``model``'s own adapter, in place: AdapterHub's ``load_adapter`` would build new
        modules, leaving the optimizer holding the old parameters. Call :meth:`check` first."""
        trainable = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
        with torch.no_grad():
            for name, tensor in load_tensors(os.path.join(directory, self.weights_name)).items():
                trainable[name].copy_(tensor)
        return True


    def load_trained(self, directory: str, base):
        """``base()`` with the adapter saved in ``directory`` loaded and active, as AdapterHub loads one."""
        adapters = _require_adapterhub()
        model = base()
        adapters.init(model)
        model.load_adapter(directory, set_active=True, use_safetensors=True)
        return model


ADAPTERHUB_ADAPTER = AdapterHubFormat()


# ---------------------------------------------------------------------------------- interop with AdapterHub

# Our parameter names inside ``<sublayer>.adapter`` -> AdapterHub's inside ``<sublayer>.adapters.<name>``.
ADAPTERHUB_PARTS = {"down_proj": "adapter_down.0", "up_proj": "adapter_up"}
# AdapterHub BnConfig fields and the values the scratch implementation reproduces; other values are refused.
ADAPTERHUB_FIXED_FIELDS = {
    "architecture": None,
    "original_ln_after": True,
    "residual_before_ln": True,
    "adapter_residual_before_ln": False,
    "ln_before": False,
    "ln_after": False,
    "is_parallel": False,
    "use_gating": False,
    "cross_adapter": False,
    "leave_out": [],
    "dropout": 0.0,
    "phm_layer": False,
    "inv_adapter": None,
    "stochastic_depth": 0.0,
}
ADAPTERHUB_PLACEMENT_FIELDS = {  # (mh_adapter, output_adapter, original_ln_before) of each placement
    "seq_bn": (False, True, True),
    "double_seq_bn": (True, True, False),
}


def adapterhub_containers() -> dict[str, str]:
    """Our attribute holding an adapter -> where AdapterHub keeps it (before the adapter's name): a T5 sublayer's
    ``adapter`` is in the sublayer's own ``adapters``; a BART layer's ``output_adapter`` in
    ``output_adapters.adapters``."""
    containers = {"adapter": "adapters"}
    for family in FAMILIES.values():
        for placement_name, hub in family.adapters.adapterhub_containers.items():
            containers[our_container(family, placement_name)] = f"{hub}.adapters"
    return containers


def adapterhub_name(name: str, adapter_name: str = LIBRARY_ADAPTER_NAME) -> str:
    """AdapterHub's name for one of our parameters.

    ``base.encoder.block.0.layer.1.adapter.down_proj.weight``
    -> ``encoder.block.0.layer.1.adapters.<name>.adapter_down.0.weight``;
    ``base.model.encoder.layers.0.output_adapter.up_proj.bias``
    -> ``model.encoder.layers.0.output_adapters.adapters.<name>.adapter_up.bias``
    """
    path, part, kind = name.removeprefix("base.").rsplit(".", 2)
    prefix, container = path.rsplit(".", 1)
    return f"{prefix}.{adapterhub_containers()[container]}.{adapter_name}.{ADAPTERHUB_PARTS[part]}.{kind}"


def adapterhub_state_dict(model: BottleneckAdapterModel, adapter_name: str = LIBRARY_ADAPTER_NAME) -> dict:
    """The scratch adapters' weights under AdapterHub's parameter names."""
    return {adapterhub_name(name, adapter_name): tensor for name, tensor in model.delta_state_dict().items()}


def adapterhub_config_dict(model: BottleneckAdapterModel, adapter_name: str = LIBRARY_ADAPTER_NAME) -> dict:
    """The ``adapter_config.json`` AdapterHub's ``save_adapter`` would write for the same adapter."""
    from ..version import __version__

    settings = model.settings
    mh_adapter, output_adapter, original_ln_before = ADAPTERHUB_PLACEMENT_FIELDS[settings.adapter_config]
    config = {key: value for key, value in ADAPTERHUB_FIXED_FIELDS.items() if key != "architecture"}
    config.update(
        mh_adapter=mh_adapter,
        output_adapter=output_adapter,
        original_ln_before=original_ln_before,
        reduction_factor=settings.reduction_factor,
        non_linearity=settings.non_linearity,
        scaling=settings.scaling,
        init_weights=settings.init_weights,
    )
    return {
        "config": config,
        "hidden_size": model.base.config.d_model,
        "model_class": type(model.base).__name__,
        "model_name": model.config.base_model_name_or_path or "",
        "model_type": model.base.config.model_type,
        "name": adapter_name,
        "version": f"hf_peft_suite.{__version__}",
    }


def export_to_adapterhub(model: BottleneckAdapterModel, directory, adapter_name: str = LIBRARY_ADAPTER_NAME) -> None:
    """Write the scratch adapters in AdapterHub's format, for ``model.load_adapter(directory, use_safetensors=True)``.

    Needs no ``adapters`` install: the format is ``adapter_config.json`` and ``adapter.safetensors``.
    """
    from safetensors.torch import save_file

    if not isinstance(model, BottleneckAdapterModel):
        raise UsageError(f"export_to_adapterhub needs a scratch adapter model, got a {type(model).__name__}")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ADAPTERHUB_CONFIG_NAME), "w", encoding="utf-8") as file:
        json.dump(adapterhub_config_dict(model, adapter_name), file, indent=2, sort_keys=True)
    save_file(adapterhub_state_dict(model, adapter_name), os.path.join(directory, ADAPTERHUB_WEIGHTS_NAME))


def adapter_options_from_adapterhub(config: dict) -> AdapterOptions:
    """The :class:`AdapterOptions` for an AdapterHub bottleneck config, refusing what the scratch code lacks."""
    for key, supported in ADAPTERHUB_FIXED_FIELDS.items():
        if config.get(key, supported) != supported:
            raise UsageError(
                f"this AdapterHub adapter has {key}={config[key]!r}; the scratch implementation reproduces only "
                f"seq_bn / double_seq_bn with {key}={supported!r}: use it through --implementation library"
            )
    placement = (config.get("mh_adapter"), config.get("output_adapter"), config.get("original_ln_before", False))
    names = {fields: name for name, fields in ADAPTERHUB_PLACEMENT_FIELDS.items()}
    if placement not in names:
        raise UsageError(
            f"this AdapterHub adapter has (mh_adapter, output_adapter, original_ln_before) = {placement}; the "
            f"scratch implementation reproduces seq_bn {ADAPTERHUB_PLACEMENT_FIELDS['seq_bn']} and double_seq_bn "
            f"{ADAPTERHUB_PLACEMENT_FIELDS['double_seq_bn']}"
        )
    if not isinstance(config.get("reduction_factor"), (int, float)):
        raise UsageError(
            f"this AdapterHub adapter has reduction_factor={config.get('reduction_factor')!r}; the scratch "
            f"implementation supports one reduction factor for every layer"
        )
    if not isinstance(config.get("scaling", 1.0), (int, float)):
        raise UsageError(f"this AdapterHub adapter has scaling={config['scaling']!r}; only a constant is supported")
    return AdapterOptions(
        adapter_config=names[placement],
        adapter_reduction_factor=config.get("reduction_factor"),
        adapter_non_linearity=config.get("non_linearity"),
        adapter_scaling=config.get("scaling", 1.0),
        adapter_init_weights=config.get("init_weights", "bert"),
    )


def import_from_adapterhub(directory, base_model) -> BottleneckAdapterModel:
    """A scratch :class:`BottleneckAdapterModel` on ``base_model`` with the AdapterHub adapter saved in ``directory``.

    Reads ``adapter.safetensors`` or, failing that, AdapterHub's default ``pytorch_adapter.bin`` (tensors only).
    """
    from safetensors.torch import load_file

    config_path = os.path.join(directory, ADAPTERHUB_CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise UsageError(f"{directory} holds no {ADAPTERHUB_CONFIG_NAME}: it is not an AdapterHub adapter folder")
    with open(config_path, encoding="utf-8") as file:
        saved = json.load(file)
    model = build_scratch_adapter(base_model, adapter_options_from_adapterhub(saved["config"]))
    safe_weights = os.path.join(directory, ADAPTERHUB_WEIGHTS_NAME)
    torch_weights = os.path.join(directory, ADAPTERHUB_TORCH_WEIGHTS_NAME)
    if os.path.isfile(safe_weights):
        state_dict = load_file(safe_weights)
    elif os.path.isfile(torch_weights):
        state_dict = torch.load(torch_weights, map_location="cpu", weights_only=True)
    else:
        raise UsageError(
            f"{directory} holds no {ADAPTERHUB_WEIGHTS_NAME} or {ADAPTERHUB_TORCH_WEIGHTS_NAME}: save the adapter "
            f"again with model.save_adapter(directory, name)"
        )
    ours = {adapterhub_name(name, saved.get("name", "")): name for name in model.delta_parameter_names()}
    model.load_delta_state_dict(
        {ours.get(name, name): tensor for name, tensor in state_dict.items()}, source=str(directory)
    )
    return model


METHOD = Method(
    name="adapter",
    options=AdapterOptions,
    recommended=Recommended(
        source="AdapterHub's training guide (docs.adapterhub.ml/training.html): 'a default adapter learning rate of 1e-4 "
        "works well for most settings'; the Pfeiffer (seq_bn) placement with reduction factor 16 is AdapterHub's "
        "default bottleneck configuration. Linear decay as in AdapterHub's examples.",
        settings={"learning_rate": 1e-4, "lr_scheduler_type": "linear", "adapter_config": "seq_bn",
                  "adapter_reduction_factor": 16},
    ),
    build_scratch=build_scratch_adapter,
    scratch_format=SCRATCH_DELTA,
    build_library=build_library_adapter,
    library_format=ADAPTERHUB_ADAPTER,
    library_module="adapters",
    library_install_hint=INSTALL_HINT,
)
