"""LoRA (low-rank adaptation) and its DoRA variant, written from scratch and configured in HF ``peft``, side by side.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685.
A frozen linear layer ``W0 x`` gets a trainable low-rank update::

    h = W0 x + (alpha / r) * B A dropout(x)        A: r x d_in, B: d_out x r

A starts Kaiming-uniform (as ``nn.Linear``'s own init, ``a = sqrt(5)``) and B starts at zero, so ``B A = 0`` and the
adapted model begins exactly equal to the base. Adapting a layer costs ``r * (d_in + d_out)`` parameters; with the
default targets (``q`` and ``v`` of every attention: 6 encoder self-attentions plus 6 decoder self- and 6 cross-
attentions in t5-small, all 512 -> 512) and ``r = 8`` that is ``36 * 8 * (512 + 512) = 294,912``.

DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", https://arxiv.org/abs/2402.09353,
``--lora_use_dora true``) splits the adapted weight into a magnitude and a direction and trains a magnitude ``m``
(one number per output row) beside A and B::

    W' = m * (W0 + s B A) / ||W0 + s B A||_row        s = alpha / r;  m starts as ||W0||_row, so W' = W0 at first

and, as the paper's section 4.3 suggests and peft does, the norm is treated as a constant in back-propagation. In
the forward pass, without materialising ``W'`` (peft's ``DoraLinearLayer``)::

    h = W0 x + b + (m / n - 1) * (W0 x) + (m / n) * s B A x        n = ||W0 + s B A||_row (detached)

It costs ``d_out`` more per layer: 294,912 + 36 * 512 = 313,344 on t5-small (q, v, r 8).

Two implementations, configured by the same :class:`LoRAOptions`:

* ``scratch``: :class:`LoRALinear` wraps each targeted ``nn.Linear`` (its frozen weight is the original layer's own
  weight, not a copy), and :class:`LoRAModel` (a :class:`~hf_peft_suite.methods.delta.DeltaModel`) holds the base,
  saves only the LoRA weights and loads through ``AutoModelForSeq2SeqLM``. No ``peft`` import on this path.
* ``library``: ``peft.get_peft_model`` with the ``LoraConfig`` that :func:`peft_lora_config` builds.

Parity is designed in, from peft's ``tuners/lora/layer.py``, ``variants.py`` and ``dora.py`` (0.21): the same
scaling ``alpha / r``, dropout applied to the input of A only, ``(result + B(A(dropout(x))) * scaling)`` in that
order, A and B built as ``nn.Linear`` layers and A re-initialised Kaiming-uniform (so, layer for layer in
``named_modules`` order, the same seed draws the same A in both), DoRA's magnitude, norm and dropout handling in
peft's order, and the same parameter names (``<module>.lora_A.weight``, ``<module>.lora_B.weight``,
``<module>.lora_magnitude_vector.weight``), which makes :func:`export_to_peft` / :func:`import_from_peft` a renaming
of keys. Target layers: :mod:`~hf_peft_suite.methods.targets` (names, dotted suffixes, a regular expression, or
all-linear; by default the family's, as peft's table has them: ``q v`` on T5/mT5, ``q_proj v_proj`` on BART).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from .base import Method, Recommended
from .delta import DeltaConfig, attach_base, delta_config_kwargs, register_delta_model
from .formats import PEFT_LIBRARY, SCRATCH_DELTA
from .peft_files import (
    PEFT_KEY_PREFIX,
    check_adapter_keys,
    load_adapter_weights,
    peft_key,
    read_peft_adapter,
    refuse_unsupported_fields,
    saved_target_modules,
    write_peft_adapter,
)
from .sharding import gathered, keep_gathered_in_forward
from .targets import (
    ALL_LINEAR,
    AdaptedLinear,
    AdaptedLinearModel,
    adapted_layers,
    adapter_parameter_dtype,
    describe,
    find_target_modules,
    parse_target_modules,
    replace_module,
    resolve_target_modules,
)

__all__ = ["ALL_LINEAR", "PEFT_KEY_PREFIX", "LoRALinear", "LoRAModel", "LoRAOptions", "build_library", "build_scratch",
           "export_to_peft", "import_from_peft", "lora_layers"]

TARGETS_OPTION = "lora_target_modules"
# The trainable tensors of one LoRALinear, named as peft names them (minus peft's adapter name, ``default``).
LORA_PARAMETER_NAMES = ("lora_A.weight", "lora_B.weight")
DORA_PARAMETER_NAME = "lora_magnitude_vector.weight"
DORA_FILE_NAME = "lora_magnitude_vector"  # peft's adapter_model.safetensors keeps the pre-0.12 name, without .weight


# ------------------------------------------------------------------------------------------------------- options
@dataclass
class LoRAOptions:
    """LoRA's options, shared by both implementations (``--lora_r 8 --lora_alpha 16 ...``)."""

    lora_r: int = field(default=8, metadata={"help": "LoRA rank r: the inner dimension of the update B·A."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha: the update B·A is scaled by alpha / r."})
    lora_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the input of LoRA's A (the frozen path sees no extra dropout)."}
    )
    lora_target_modules: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Linear layers to adapt: names or dotted suffixes (q k v o wi wo in T5, q_proj v_proj fc1 ... in "
            "BART; 'q,v' works too), one regular expression matching whole module names (e.g. '.*decoder.*(q|v)'), "
            "or 'all-linear' for every linear layer but the LM head. Default: the model family's (peft's table): "
            "q v for T5 and mT5, q_proj v_proj for BART."
        },
    )
    lora_use_dora: bool = field(
        default=False,
        metadata={"help": "DoRA (Liu et al. 2024): also train a per-row magnitude of the adapted weight."},
    )

    def __post_init__(self):
        self.lora_target_modules = parse_target_modules(self.lora_target_modules, TARGETS_OPTION)
        if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r <= 0:
            raise UsageError(
                f"--lora_r must be a positive integer (got {self.lora_r!r}); the rank is usually 4 to 64, e.g. 8"
            )
        if not self.lora_alpha > 0:
            raise UsageError(
                f"--lora_alpha must be positive (got {self.lora_alpha!r}); it scales the update by alpha / r, e.g. 16"
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UsageError(f"--lora_dropout must be in [0, 1) (got {self.lora_dropout!r}), e.g. 0.0 or 0.1")
        if not isinstance(self.lora_use_dora, bool):
            raise UsageError(f"--lora_use_dora takes true or false (got {self.lora_use_dora!r})")


def check_lora_hyperparameters(rank, alpha, dropout) -> None:
    """A ``ValueError`` naming the argument of :class:`LoRALinear` that LoRA cannot use."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


# ---------------------------------------------------------------------------------------------- the LoRA layer
def init_lora_a_kaiming_uniform_(weight: torch.Tensor) -> None:
    """A's init (Hu et al. 2021; peft, loralib): Kaiming-uniform with ``a = sqrt(5)``, as ``nn.Linear`` does."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def init_lora_b_zeros_(weight: torch.Tensor) -> None:
    """B's init: zeros, so ``B A = 0`` and the adapted layer starts equal to the frozen one."""
    nn.init.zeros_(weight)


def row_norm(weight: torch.Tensor, lora_weight: torch.Tensor, scaling: float) -> torch.Tensor:
    """``||W0 + s B A||`` of every output row (DoRA's ``||V + ΔV||_c``), computed as peft's ``get_weight_norm``."""
    weight = weight + scaling * lora_weight
    return torch.linalg.norm(weight, dim=1).to(weight.dtype)


class DoRAMagnitude(nn.Module):
    """DoRA's trained magnitude ``m``: one number per output row of the adapted weight (``weight``, d_out)."""

    def __init__(self, magnitude: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(magnitude)


class LoRALinear(AdaptedLinear):
    """``y = W0 x + (alpha / r) * B A dropout(x)`` around a frozen ``nn.Linear`` (Hu et al. 2021, eq. 3), or its DoRA
    form (Liu et al. 2024, eq. 5) with ``use_dora=True``.

    Args:
        base_layer: the layer to adapt; it is kept (``self.base_layer``), not copied, and frozen.
        rank: r, the inner dimension of ``B A``.
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout probability on the input of A.
        use_dora: also train a magnitude per output row (``lora_magnitude_vector.weight``, starting at ``||W0||``).

    Trainable parameters (:meth:`adapter_params`): ``lora_A.weight`` (r x d_in) and ``lora_B.weight`` (d_out x r),
    r * (d_in + d_out) in all, plus d_out for DoRA's magnitude.
    """

    method_name = "LoRA"

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, use_dora: bool = False):
        super().__init__(base_layer)
        check_lora_hyperparameters(rank, alpha, dropout)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.use_dora = bool(use_dora)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Built on the default device and dtype, then moved: the same random draws as peft's layer.
        self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False)
        self.reset_lora_parameters()
        weight = base_layer.weight
        self.lora_A.to(device=weight.device, dtype=adapter_parameter_dtype(weight.dtype))
        self.lora_B.to(device=weight.device, dtype=adapter_parameter_dtype(weight.dtype))
        if self.use_dora:
            with torch.no_grad(), gathered([weight]):  # ZeRO-3 holds W0 partitioned: ||W0|| needs all of it
                lora_weight = self.lora_B.weight @ self.lora_A.weight
                magnitude = row_norm(weight.to(lora_weight.device), lora_weight, self.scaling)
            self.lora_magnitude_vector = DoRAMagnitude(magnitude)
            keep_gathered_in_forward(self, weight)  # dora_update reads W0 after the base layer has run

    def adapter_params(self) -> list[str]:
        """The trained parameters (the :class:`~hf_peft_suite.methods.delta.DeltaModule` protocol)."""
        return [*LORA_PARAMETER_NAMES, *([DORA_PARAMETER_NAME] if self.use_dora else [])]

    def reset_lora_parameters(self) -> None:
        init_lora_a_kaiming_uniform_(self.lora_A.weight)
        init_lora_b_zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        result_dtype = result.dtype
        x = x.to(self.lora_A.weight.dtype)
        if self.use_dora:
            result = result + self.dora_update(x, result)
        else:
            result = result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
        return result.to(result_dtype)

    def dora_update(self, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        """What DoRA adds to ``W0 x + b``: ``(m / n - 1) W0 x + (m / n) s B A x`` (peft's order of operations).

        With dropout active, ``x`` is dropped out for both terms (``W0`` then sees the dropped input too), as in peft.
        """
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            bias = self.base_layer.bias
            base_result = base_result if bias is None else base_result - bias
        else:
            x = self.lora_dropout(x)
            base_result = None
        eye = torch.eye(self.lora_A.in_features, device=x.device, dtype=self.lora_A.weight.dtype)
        lora_weight = self.lora_B(self.lora_A(eye)).T.to(x.dtype)  # B A, computed as peft does (FSDP-safe)
        weight = self.base_layer.weight.to(x.dtype)
        norm = row_norm(weight, lora_weight.detach(), self.scaling).detach()
        scale = (self.lora_magnitude_vector.weight / norm).view(1, -1)
        lora_result = self.lora_B(self.lora_A(x))
        if base_result is None:
            base_result = F.linear(x, weight)
        return (scale - 1) * base_result + scale * lora_result * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) * B A`` (d_out x d_in): what plain LoRA adds to the frozen weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def merged_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``W0 + s B A``; DoRA: ``m / ||W0 + s B A||_row * (W0 + s B A)``. The bias is unchanged."""
        weight = self.base_layer.weight
        delta = self.delta_weight().to(weight.dtype)
        if not self.use_dora:
            return weight + delta, None
        norm = row_norm(weight, delta, 1.0).detach()
        factor = (self.lora_magnitude_vector.weight / norm).view(-1, 1)
        return factor * (weight + delta), None

    def extra_repr(self) -> str:
        dora = ", dora=True" if self.use_dora else ""
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}{dora}, merged={self.merged}"


def inject_lora(model: nn.Module, targets: list[str] | str, rank: int, alpha: float, dropout: float,
                use_dora: bool = False) -> list[str]:
    """Replace every targeted ``nn.Linear`` of ``model`` (in place) by a :class:`LoRALinear` around it.

    Layers are wrapped in ``named_modules`` order, as peft does, so a seeded run draws the same A matrices.
    Returns the full names of the wrapped layers.
    """
    names = find_target_modules(model, targets, TARGETS_OPTION, AdaptedLinear)
    for name in names:
        replace_module(model, name, LoRALinear(model.get_submodule(name), rank, alpha, dropout, use_dora))
    return names


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """``(name, layer)`` for every :class:`LoRALinear` in ``model``."""
    return adapted_layers(model, LoRALinear)


# -------------------------------------------------------------------------------------- the scratch wrapper
class LoRAConfig(DeltaConfig):
    """A frozen base model plus LoRA: the base's name and architecture, and the LoRA options (targets resolved)."""

    model_type = "hf_peft_suite_lora"

    def __init__(
        self,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: Union[list[str], str, None] = None,
        lora_use_dora: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = lora_target_modules if isinstance(lora_target_modules, str) else list(
            lora_target_modules or ["q", "v"]
        )
        self.lora_use_dora = lora_use_dora


class LoRAModel(AdaptedLinearModel):
    """A frozen seq2seq base whose targeted linear layers are :class:`LoRALinear`; only A and B (and DoRA's
    magnitude) are trained and saved.

    ``save_pretrained`` writes ``config.json`` and the LoRA weights (``model.safetensors``, names like
    ``base.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight``); after ``import hf_peft_suite``,
    ``AutoModelForSeq2SeqLM.from_pretrained(folder)`` rebuilds base + LoRA. :meth:`merge_and_unload` gives a plain
    base-class model (e.g. ``T5ForConditionalGeneration``) with the update folded in.
    """

    config_class = LoRAConfig
    layer_class = LoRALinear

    def __init__(self, config: LoRAConfig, base_model=None):
        super().__init__(config, base_model)
        self.lora_module_names = inject_lora(
            self.base, config.lora_target_modules, config.lora_r, config.lora_alpha, config.lora_dropout,
            config.lora_use_dora,
        )

    def lora_layers(self) -> Iterator[tuple[str, LoRALinear]]:
        """``(name in self.base, layer)`` for every LoRA layer."""
        return self.adapted_layers()


register_delta_model(LoRAConfig, LoRAModel)


# ------------------------------------------------------------------------------------------------- builders
def lora_options(options) -> LoRAOptions:
    return options if options is not None else LoRAOptions()


def lora_targets(base_model, options: LoRAOptions) -> list[str] | str:
    """The explicit targets both implementations are built with (the family's default when none are given)."""
    return resolve_target_modules(base_model, options.lora_target_modules, "lora", "lora_targets")


def build_scratch(base_model, options=None, tokenizer=None) -> LoRAModel:
    """Wrap ``base_model`` (frozen) in a :class:`LoRAModel` with ``options``."""
    options = lora_options(options)
    config = LoRAConfig(
        lora_r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        lora_target_modules=lora_targets(base_model, options),
        lora_use_dora=options.lora_use_dora,
        **delta_config_kwargs(base_model),
    )
    return LoRAModel(config, base_model)


def peft_lora_config(options: LoRAOptions, target_modules, base_model_name_or_path: str | None = None):
    """peft's ``LoraConfig`` for ``options``: the same rank, alpha, dropout and DoRA switch, and these explicit
    targets (a list of names or one regular expression)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        use_dora=options.lora_use_dora,
        bias="none",
        base_model_name_or_path=base_model_name_or_path,
    )


def build_library(base_model, options=None, tokenizer=None):
    """``peft.get_peft_model(base_model, LoraConfig(...))``: a ``PeftModelForSeq2SeqLM`` (base frozen by peft)."""
    from peft import get_peft_model

    options = lora_options(options)
    target_modules = lora_targets(base_model, options)
    find_target_modules(base_model, target_modules, TARGETS_OPTION, AdaptedLinear)  # the scratch path's UsageError
    return get_peft_model(base_model, peft_lora_config(options, target_modules))


# ------------------------------------------------------------------------------------ peft-format interop
def export_to_peft(model: LoRAModel, directory) -> None:
    """Write ``model``'s LoRA as a peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``) that
    ``PeftModel.from_pretrained(base, directory)`` loads. The weights are exported as they are (unmerged); the
    targets as they were given (names, dotted names or a regular expression)."""
    if not isinstance(model, LoRAModel):
        raise UsageError(f"export_to_peft takes a LoRAModel (scratch LoRA), not {type(model).__name__}")
    config = model.config
    options = LoRAOptions(lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          lora_use_dora=config.lora_use_dora)
    peft_config = peft_lora_config(options, config.lora_target_modules, config.base_model_name_or_path)
    weights = {peft_key(name).removesuffix(".weight") if name.endswith(DORA_PARAMETER_NAME) else peft_key(name): tensor
               for name, tensor in model.delta_state_dict().items()}
    write_peft_adapter(directory, peft_config, weights)


# peft LoraConfig fields that change what plain LoRA (or DoRA) computes or where it goes, with the value it has.
PEFT_PLAIN_LORA_FIELDS = {
    "bias": "none",
    "fan_in_fan_out": False,
    "use_rslora": False,
    "lora_bias": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "modules_to_save": None,
    "layers_to_transform": None,
    "layer_replication": None,
    "target_parameters": None,
    "trainable_token_indices": None,
    "exclude_modules": None,
}


def import_from_peft(directory, base_model=None) -> LoRAModel:
    """A :class:`LoRAModel` from a peft LoRA (or DoRA) adapter folder.

    The base is ``base_model`` if given, else the one the adapter names (``base_model_name_or_path``). The saved
    ``target_modules`` are used as they are (names, dotted names, or a regular expression). Adapters that use what
    the scratch LoRA lacks (rsLoRA, per-layer ranks, bias training, ...) or adapt only some of the layers their
    targets select are refused with a :class:`UsageError`. peft is not needed to import.
    """
    adapter = read_peft_adapter(directory, "LORA", "LoRA")
    peft_config = adapter.config
    refuse_unsupported_fields(peft_config, PEFT_PLAIN_LORA_FIELDS, adapter.config_path)
    use_dora = bool(peft_config.get("use_dora"))
    dora_names = (DORA_FILE_NAME, DORA_PARAMETER_NAME) if use_dora else ()  # peft writes the first, reads both
    check_adapter_keys(adapter, (*LORA_PARAMETER_NAMES, *dora_names), "LoRA")
    weights = {f"{key}.weight" if key.endswith(DORA_FILE_NAME) else key: tensor
               for key, tensor in adapter.weights.items()}
    adapter = adapter._replace(weights=weights)
    module_names = sorted({key[len(PEFT_KEY_PREFIX):].rsplit(".", 2)[0] for key in adapter.weights})
    config = LoRAConfig(
        lora_r=peft_config["r"],
        lora_alpha=peft_config["lora_alpha"],
        lora_dropout=peft_config.get("lora_dropout", 0.0),
        lora_target_modules=saved_target_modules(adapter),
        lora_use_dora=use_dora,
        base_model_name_or_path=peft_config.get("base_model_name_or_path"),
    )
    base_model = attach_base(config, base_model, delta_source=str(directory))
    model = LoRAModel(config, base_model)
    if sorted(model.lora_module_names) != module_names:
        extra = sorted(set(model.lora_module_names) - set(module_names))
        raise UsageError(
            f"{directory} adapts only some of the layers its targets {describe(config.lora_target_modules)} select "
            f"(not e.g. {extra[:2]}); this scratch LoRA adapts every layer they select: use --implementation library "
            f"for it"
        )
    load_adapter_weights(model, adapter)
    return model


METHOD = Method(
    name="lora",
    options=LoRAOptions,
    recommended=Recommended(
        source="The LoRA authors' RoBERTa-base GLUE script (github.com/microsoft/LoRA, examples/NLU/roberta_base_mnli.sh): "
        "LoRA on q and v (the family's default targets here: q v in T5, q_proj v_proj in BART), r 8, alpha 16, AdamW at "
        "5e-4 with linear decay after 6% warm-up. Epochs stay at the reference recipe's 10 so every cell trains as long.",
        settings={"learning_rate": 5e-4, "lr_scheduler_type": "linear", "warmup_ratio": 0.06, "lora_r": 8,
                  "lora_alpha": 16},
    ),
    build_scratch=build_scratch,
    scratch_format=SCRATCH_DELTA,
    build_library=build_library,
    **PEFT_LIBRARY,
)
