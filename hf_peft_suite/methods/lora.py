"""LoRA (low-rank adaptation), written from scratch and configured in HF ``peft``, side by side.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685.
A frozen linear layer ``W0 x`` gets a trainable low-rank update::

    h = W0 x + (alpha / r) * B A dropout(x)        A: r x d_in, B: d_out x r

A starts Kaiming-uniform (as ``nn.Linear``'s own init, ``a = sqrt(5)``) and B starts at zero, so ``B A = 0`` and the
adapted model begins exactly equal to the base. Adapting a layer costs ``r * (d_in + d_out)`` parameters; with the
default targets (``q`` and ``v`` of every attention: 6 encoder self-attentions plus 6 decoder self- and 6 cross-
attentions in t5-small, all 512 -> 512) and ``r = 8`` that is ``36 * 8 * (512 + 512) = 294,912``.

Two implementations, configured by the same :class:`LoRAOptions`:

* ``scratch``: :class:`LoRALinear` wraps each targeted ``nn.Linear`` (its frozen weight is the original layer's own
  weight, not a copy), and :class:`LoRAModel` (a :class:`~hf_peft_suite.methods.delta.DeltaModel`) holds the base,
  saves only the LoRA weights and loads through ``AutoModelForSeq2SeqLM``. No ``peft`` import on this path.
* ``library``: ``peft.get_peft_model`` with the ``LoraConfig`` that :func:`peft_lora_config` builds.

Parity is designed in, from peft's ``tuners/lora/layer.py`` (0.21): the same scaling ``alpha / r``, dropout applied
to the input of A only, ``(result + B(A(dropout(x))) * scaling)`` in that order, A and B built as ``nn.Linear``
layers and A re-initialised Kaiming-uniform (so, layer for layer in ``named_modules`` order, the same seed draws the
same A in both), and the same parameter names (``<module>.lora_A.weight``, ``<module>.lora_B.weight``), which makes
:func:`export_to_peft` / :func:`import_from_peft` a renaming of keys.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..errors import UsageError
from ..files import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME
from ..weights import load_tensors
from .base import Method, Recommended
from .delta import DeltaConfig, DeltaModel, delta_config_kwargs, load_base_model, register_delta_model
from .formats import PEFT_ADAPTER, SCRATCH_DELTA

DEFAULT_TARGET_MODULES = ("q", "v")
ALL_LINEAR = "all-linear"
# The trainable tensors of one LoRALinear, named as peft names them (minus peft's adapter name, ``default``).
LORA_PARAMETER_NAMES = ("lora_A.weight", "lora_B.weight")
# How peft names a module's LoRA weights in adapter_model.safetensors: PeftModel.base_model.model.<module path>.
PEFT_KEY_PREFIX = "base_model.model."


# ------------------------------------------------------------------------------------------------------- options
@dataclass
class LoRAOptions:
    """LoRA's options, shared by both implementations (``--lora_r 8 --lora_alpha 16 ...``)."""

    lora_r: int = field(default=8, metadata={"help": "LoRA rank r: the inner dimension of the update B·A."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha: the update B·A is scaled by alpha / r."})
    lora_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the input of LoRA's A (the frozen path sees no extra dropout)."}
    )
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        metadata={
            "help": "Linear layers to adapt, by name or dotted suffix (q k v o wi wo in T5; 'q,v' works too), or "
            "'all-linear' for every linear layer but the LM head (q k v o wi wo in T5)."
        },
    )

    def __post_init__(self):
        self.lora_target_modules = parse_target_modules(self.lora_target_modules)
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


def parse_target_modules(target_modules) -> list[str]:
    """``"q,v"``, ``["q,v"]`` or ``["q", "v"]`` -> ``["q", "v"]``; ``"all-linear"`` must stand alone."""
    entries = [target_modules] if isinstance(target_modules, str) else list(target_modules or [])
    names = [name.strip() for entry in entries for name in str(entry).split(",") if name.strip()]
    if not names:
        raise UsageError("--lora_target_modules is empty; name the linear layers to adapt, e.g. q v, or all-linear")
    if ALL_LINEAR in names and len(names) > 1:
        raise UsageError(f"--lora_target_modules {' '.join(names)}: use all-linear alone, or list the layers by name")
    return names


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


def lora_parameter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """LoRA weights stay fp32 over a half-precision base (as peft's ``autocast_adapter_dtype=True``)."""
    return torch.float32 if base_dtype in (torch.float16, torch.bfloat16) else base_dtype


class LoRALinear(nn.Module):
    """``y = W0 x + (alpha / r) * B A dropout(x)`` around a frozen ``nn.Linear`` (Hu et al. 2021, eq. 3).

    Args:
        base_layer: the layer to adapt; it is kept (``self.base_layer``), not copied, and frozen.
        rank: r, the inner dimension of ``B A``.
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout probability on the input of A.

    Trainable parameters (:meth:`adapter_params`): ``lora_A.weight`` (r x d_in) and ``lora_B.weight`` (d_out x r),
    r * (d_in + d_out) in all.
    """

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        check_lora_hyperparameters(rank, alpha, dropout)
        self.base_layer = base_layer.requires_grad_(False)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Built on the default device and dtype, then moved: the same random draws as peft's layer.
        self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False)
        self.reset_lora_parameters()
        weight = base_layer.weight
        self.lora_A.to(device=weight.device, dtype=lora_parameter_dtype(weight.dtype))
        self.lora_B.to(device=weight.device, dtype=lora_parameter_dtype(weight.dtype))
        self.merged = False

    @property
    def weight(self) -> torch.Tensor:
        """The frozen W0 (models read their linear layers' ``.weight``, e.g. T5's feed-forward for its dtype)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def adapter_params(self) -> list[str]:
        """The trained parameters (the :class:`~hf_peft_suite.methods.delta.DeltaModule` protocol)."""
        return list(LORA_PARAMETER_NAMES)

    def reset_lora_parameters(self) -> None:
        init_lora_a_kaiming_uniform_(self.lora_A.weight)
        init_lora_b_zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        x = x.to(self.lora_A.weight.dtype)
        return (result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling).to(result.dtype)

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) * B A``: what :meth:`merge` adds to the frozen weight (d_out x d_in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the frozen weight (``W0 += (alpha / r) B A``); forward then skips A and B."""
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged; call unmerge() before merging again")
        weight = self.base_layer.weight
        weight += self.delta_weight().to(weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the frozen weight (exact up to fp rounding, about 1e-7 in fp32)."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged; there is nothing to unmerge")
        weight = self.base_layer.weight
        weight -= self.delta_weight().to(weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


# ----------------------------------------------------------------------------------------- choosing the layers
def module_matches(module_name: str, targets: list[str]) -> bool:
    """peft's rule for a list of targets: the module's full name equals a target or ends with ``.<target>``."""
    return any(module_name == target or module_name.endswith(f".{target}") for target in targets)


def resolve_target_modules(model: nn.Module, target_modules) -> list[str]:
    """The explicit target names both implementations get: ``all-linear`` becomes every linear layer's name
    (last component) except the LM head's, as peft's ``all-linear`` does; other lists are returned as given."""
    names = parse_target_modules(target_modules)
    if names != [ALL_LINEAR]:
        return names
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not output_embeddings
        }
    )


def find_target_modules(model: nn.Module, target_modules: list[str]) -> list[str]:
    """Full names (in ``named_modules`` order) of the linear layers ``target_modules`` selects; a
    :class:`UsageError` if it selects none, or selects something that is not a plain ``nn.Linear``."""
    found = []
    for name, module in model.named_modules():
        if not name or not module_matches(name, target_modules):
            continue
        if isinstance(module, LoRALinear):
            raise UsageError(f"{name} already has LoRA; build LoRA on a fresh base model, not on a LoRA model")
        if type(module) is not nn.Linear:
            raise UsageError(
                f"--lora_target_modules {' '.join(target_modules)} selects {name}, a {type(module).__name__}; "
                f"LoRA here adapts nn.Linear layers only: name linear layers (e.g. q v) or use all-linear"
            )
        found.append(name)
    if not found:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise UsageError(
            f"--lora_target_modules {' '.join(target_modules)} matches no module of {type(model).__name__}; "
            f"its linear layers are named {', '.join(linear)}: choose from those, or use all-linear"
        )
    return found


def inject_lora(model: nn.Module, target_modules: list[str], rank: int, alpha: float, dropout: float) -> list[str]:
    """Replace every targeted ``nn.Linear`` of ``model`` (in place) by a :class:`LoRALinear` around it.

    Layers are wrapped in ``named_modules`` order, as peft does, so a seeded run draws the same A matrices.
    Returns the full names of the wrapped layers.
    """
    names = find_target_modules(model, target_modules)
    for name in names:
        replace_module(model, name, LoRALinear(model.get_submodule(name), rank, alpha, dropout))
    return names


def replace_module(model: nn.Module, name: str, new_module: nn.Module) -> None:
    """Put ``new_module`` where ``model``'s submodule ``name`` (dotted path) is."""
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, new_module)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """``(name, layer)`` for every :class:`LoRALinear` in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


# -------------------------------------------------------------------------------------- the scratch wrapper
class LoRAConfig(DeltaConfig):
    """A frozen base model plus LoRA: the base's name and architecture, and the LoRA options."""

    model_type = "hf_peft_suite_lora"

    def __init__(
        self,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = list(lora_target_modules or DEFAULT_TARGET_MODULES)


class LoRAModel(DeltaModel):
    """A frozen seq2seq base whose targeted linear layers are :class:`LoRALinear`; only A and B are trained/saved.

    ``save_pretrained`` writes ``config.json`` and the LoRA weights (``model.safetensors``, names like
    ``base.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight``); after ``import hf_peft_suite``,
    ``AutoModelForSeq2SeqLM.from_pretrained(folder)`` rebuilds base + LoRA. :meth:`merge_and_unload` gives a plain
    base-class model (e.g. ``T5ForConditionalGeneration``) with the update folded in.
    """

    config_class = LoRAConfig

    def __init__(self, config: LoRAConfig, base_model=None):
        super().__init__(config, base_model)
        self.lora_module_names = inject_lora(
            self.base, config.lora_target_modules, config.lora_r, config.lora_alpha, config.lora_dropout
        )

    def lora_layers(self) -> Iterator[tuple[str, LoRALinear]]:
        """``(name in self.base, layer)`` for every LoRA layer."""
        return lora_layers(self.base)

    def merge(self) -> None:
        """Fold every layer's update into its frozen weight, in place: inference at the base model's cost."""
        for _, layer in self.lora_layers():
            layer.merge()

    def unmerge(self) -> None:
        """Undo :meth:`merge` (the frozen weights come back up to fp rounding)."""
        for _, layer in self.lora_layers():
            layer.unmerge()

    @property
    def merged(self) -> bool:
        return any(layer.merged for _, layer in self.lora_layers())

    def merge_and_unload(self):
        """A new plain model of the base's class (``T5ForConditionalGeneration``) with ``W0 + (alpha / r) B A`` as
        its weights; it saves and loads like any model of that class. This LoRA model is left unchanged (the base
        is copied once, unlike peft's ``merge_and_unload``, which consumes its PeftModel)."""
        plain = copy.deepcopy(self.base)
        for name, layer in list(lora_layers(plain)):
            if not layer.merged:
                layer.merge()
            replace_module(plain, name, layer.base_layer)
        return plain.requires_grad_(True)


register_delta_model(LoRAConfig, LoRAModel)


# ------------------------------------------------------------------------------------------------- builders
def lora_options(options) -> LoRAOptions:
    return options if options is not None else LoRAOptions()


def build_scratch(base_model, options=None, tokenizer=None) -> LoRAModel:
    """Wrap ``base_model`` (frozen) in a :class:`LoRAModel` with ``options``."""
    options = lora_options(options)
    config = LoRAConfig(
        lora_r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        lora_target_modules=resolve_target_modules(base_model, options.lora_target_modules),
        **delta_config_kwargs(base_model),
    )
    return LoRAModel(config, base_model)


def peft_lora_config(options: LoRAOptions, target_modules: list[str], base_model_name_or_path: str | None = None):
    """peft's ``LoraConfig`` for ``options``: the same rank, alpha and dropout, and these explicit target names."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=list(target_modules),
        bias="none",
        base_model_name_or_path=base_model_name_or_path,
    )


def build_library(base_model, options=None, tokenizer=None):
    """``peft.get_peft_model(base_model, LoraConfig(...))``: a ``PeftModelForSeq2SeqLM`` (base frozen by peft)."""
    from peft import get_peft_model

    options = lora_options(options)
    target_modules = resolve_target_modules(base_model, options.lora_target_modules)
    find_target_modules(base_model, target_modules)  # the same UsageError as the scratch path
    return get_peft_model(base_model, peft_lora_config(options, target_modules))


# ------------------------------------------------------------------------------------ peft-format interop
def export_to_peft(model: LoRAModel, directory) -> None:
    """Write ``model``'s LoRA as a peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``) that
    ``PeftModel.from_pretrained(base, directory)`` loads. The weights are exported as they are (unmerged)."""
    from safetensors.torch import save_file

    config = model.config
    os.makedirs(directory, exist_ok=True)
    options = LoRAOptions(
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        lora_target_modules=list(config.lora_target_modules),
    )
    peft_config = peft_lora_config(options, config.lora_target_modules, config.base_model_name_or_path)
    peft_config.inference_mode = True
    peft_config.save_pretrained(directory)
    weights = {
        PEFT_KEY_PREFIX + name[len("base."):]: tensor
        for name, tensor in model.delta_state_dict().items()
    }
    save_file(weights, os.path.join(directory, PEFT_WEIGHTS_NAME), {"format": "pt"})


# peft LoraConfig fields that change what a plain LoRA computes or where it goes, with the value plain LoRA has.
PEFT_PLAIN_LORA_FIELDS = {
    "bias": "none",
    "fan_in_fan_out": False,
    "use_rslora": False,
    "use_dora": False,
    "lora_bias": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "modules_to_save": None,
    "layers_to_transform": None,
    "layer_replication": None,
    "target_parameters": None,
    "trainable_token_indices": None,
}


def import_from_peft(directory, base_model=None) -> LoRAModel:
    """A :class:`LoRAModel` from a peft LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).

    The base is ``base_model`` if given, else the one the adapter names (``base_model_name_or_path``). Adapters that
    use what plain LoRA lacks (DoRA, rsLoRA, per-layer ranks, bias training, ...) or adapt only some of the layers
    their target names select are refused with a :class:`UsageError`. peft is not needed to import.
    """
    directory = str(directory)
    config_path, weights_path = (os.path.join(directory, name) for name in (PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME))
    if not os.path.isfile(config_path) or not os.path.isfile(weights_path):
        raise UsageError(
            f"{directory} is not a peft adapter folder: it needs {PEFT_CONFIG_NAME} and {PEFT_WEIGHTS_NAME} "
            f"(save the PeftModel with save_pretrained(..., safe_serialization=True))"
        )
    with open(config_path, encoding="utf-8") as handle:
        peft_config = json.load(handle)
    if peft_config.get("peft_type") != "LORA":
        raise UsageError(f"{config_path} holds a {peft_config.get('peft_type')} adapter, not LoRA")
    unsupported = [
        f"{key}={peft_config[key]!r}"
        for key, plain in PEFT_PLAIN_LORA_FIELDS.items()
        if peft_config.get(key) not in (None, plain, {}, [])
    ]
    if unsupported:
        raise UsageError(
            f"{config_path} uses {', '.join(unsupported)}, which this scratch LoRA does not implement; "
            f"use it with --implementation library"
        )
    weights = load_tensors(weights_path)
    suffixes = tuple(f".{name}" for name in LORA_PARAMETER_NAMES)
    if any(not key.startswith(PEFT_KEY_PREFIX) or not key.endswith(suffixes) for key in weights):
        raise UsageError(f"{weights_path} has keys a plain peft LoRA does not write, e.g. {sorted(weights)[0]}")
    module_names = sorted({key[len(PEFT_KEY_PREFIX):].rsplit(".", 2)[0] for key in weights})

    config = LoRAConfig(
        lora_r=peft_config["r"],
        lora_alpha=peft_config["lora_alpha"],
        lora_dropout=peft_config.get("lora_dropout", 0.0),
        lora_target_modules=sorted({name.rsplit(".", 1)[-1] for name in module_names}),
        base_model_name_or_path=peft_config.get("base_model_name_or_path"),
    )
    if base_model is None:
        base_model = load_base_model(config, delta_source=directory)
    base_fields = delta_config_kwargs(base_model)
    config.base_model_config = base_fields["base_model_config"]
    config.base_model_name_or_path = config.base_model_name_or_path or base_fields["base_model_name_or_path"]
    model = LoRAModel(config, base_model)
    if sorted(model.lora_module_names) != module_names:
        extra = sorted(set(model.lora_module_names) - set(module_names))
        raise UsageError(
            f"{directory} adapts only some of the layers named {', '.join(config.lora_target_modules)} "
            f"(not e.g. {extra[:2]}); this scratch LoRA adapts every layer of a given name: use "
            f"--implementation library for it"
        )
    model.load_delta_state_dict(
        {"base." + key[len(PEFT_KEY_PREFIX):]: tensor for key, tensor in weights.items()}, source=weights_path
    )
    return model


METHOD = Method(
    name="lora",
    options=LoRAOptions,
    recommended=Recommended(
        source="The LoRA authors' RoBERTa-base GLUE script (github.com/microsoft/LoRA, examples/NLU/roberta_base_mnli.sh): "
        "LoRA on q and v, r 8, alpha 16, AdamW at 5e-4 with linear decay after 6% warm-up. Epochs stay at the reference "
        "recipe's 10 so every cell trains as long.",
        settings={"learning_rate": 5e-4, "lr_scheduler_type": "linear", "warmup_ratio": 0.06, "lora_r": 8,
                  "lora_alpha": 16, "lora_target_modules": ["q", "v"]},
    ),
    build_scratch=build_scratch,
    scratch_format=SCRATCH_DELTA,
    build_library=build_library,
    library_format=PEFT_ADAPTER,
    library_module="peft",
    library_install_hint="pip install 'peft>=0.17'",
)
