"""The shared base of the hand-written PEFT methods: a frozen seq2seq model plus a small trained *delta*.

A method (soft prompt, adapters, LoRA) subclasses :class:`DeltaConfig` (adding its options) and :class:`DeltaModel`
(adding its modules in ``__init__``), then calls :func:`register_delta_model` so the Auto classes know it::

    import hf_peft_suite                           # registers every method with AutoConfig / AutoModelForSeq2SeqLM
    model = AutoModelForSeq2SeqLM.from_pretrained("out/lora-scratch")   # base + delta, no trust_remote_code

What a delta artifact holds: ``config.json`` (the method's options, the base model's name or path and the base's
architecture) and ``model.safetensors`` with **only the delta's weights**, under the wrapper's own parameter names, so
``Trainer`` checkpoints resume with a plain ``load_state_dict``. Loading rebuilds the base from
``base_model_name_or_path`` (a Hub id, an absolute path, or a path relative to the artifact or its parent folder),
checks that its architecture matches the one the delta was trained on, adds the delta modules and loads their
weights, refusing any file whose names or shapes do not match.

The delta is found by name, through an explicit protocol (as torchtune's ``AdapterModule.adapter_params()``): every
hand-written module a method adds (``SoftPrompt``, ``BottleneckAdapter``, ``LoRALinear``) is a :class:`DeltaModule`,
whose ``adapter_params()`` lists the names of its own trained parameters. :meth:`DeltaModel.delta_parameter_names`
walks the model and collects them with their full names, so a copied or re-wrapped model (``copy.deepcopy``, a
distributed wrapper) saves and loads the same delta. The base is frozen before a subclass adds anything.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSeq2SeqLM, PretrainedConfig, PreTrainedModel

from ..compat import clean_parameter_name, full_shape, without_auto_class_bookkeeping
from ..errors import UsageError
from ..files import MODEL_WEIGHTS_NAME
from ..weights import compare_shapes, load_tensors

DELTA_WEIGHTS_NAME = MODEL_WEIGHTS_NAME  # model.safetensors, holding only the delta's tensors
# Fields that must agree between the base a delta was trained on and the base it is loaded onto (T5 and mT5 name
# them one way, BART another; a config records the ones it has).
ARCHITECTURE_FIELDS = (
    "model_type", "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
    "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim",
    "decoder_ffn_dim",
)


@runtime_checkable
class DeltaModule(Protocol):
    """A module a method adds to a frozen base; ``adapter_params()`` names its trained parameters (relative to it)."""

    def adapter_params(self) -> list[str]: ...


class DeltaConfig(PretrainedConfig):
    """Configuration of a frozen base model plus a delta: the base's name or path and its architecture."""

    model_type = "hf_peft_suite_delta"

    def __init__(self, base_model_name_or_path: str | None = None, base_model_config: dict | None = None, **kwargs):
        kwargs.setdefault("is_encoder_decoder", True)
        kwargs.setdefault("tie_word_embeddings", False)  # the base ties its own embeddings; the wrapper ties nothing
        super().__init__(**kwargs)
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_config = base_model_config


class DeltaModel(PreTrainedModel):
    """A frozen seq2seq base (``self.base``) plus trainable modules added by a subclass.

    ``forward``, ``generate`` and the embedding accessors delegate to the base; a method that changes the inputs
    (prompt tuning) overrides them.
    """

    config_class = DeltaConfig
    base_model_prefix = "base"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # T5's own forward takes no loss kwargs, so Trainer averages the loss per batch; the wrapper must do the same.
    accepts_loss_kwargs = False

    def __init__(self, config: DeltaConfig, base_model: PreTrainedModel | None = None):
        super().__init__(config)
        # Run transformers' bookkeeping while the wrapper is still empty, so it initialises none of the base's weights.
        self.post_init()
        if base_model is None:
            base_model = load_base_model(config)
        check_same_architecture(config, base_model.config)
        self.base = base_model
        self.base.requires_grad_(False)

    # ----------------------------------------------------------------------------------------------- the delta
    def delta_parameter_names(self) -> list[str]:
        """Names (in ``self.state_dict()``) of every parameter the method added: what is trained and saved.

        The parameters every :class:`DeltaModule` inside the model names (the model itself may be one), in
        ``named_modules`` order, by the names the unwrapped model gives them: under FSDP1, activation checkpointing
        or ``torch.compile`` the modules' paths carry the wrappers' segments (``_fsdp_wrapped_module``), which the
        state dict Trainer saves from does not (:func:`~hf_peft_suite.compat.clean_parameter_name`).
        """
        names = []
        for prefix, module in self.named_modules():
            if isinstance(module, DeltaModule):
                names += [clean_parameter_name(f"{prefix}.{name}" if prefix else name)
                          for name in module.adapter_params()]
        return names

    def delta_shapes(self) -> dict[str, tuple[int, ...]]:
        """The delta's parameter names and their full shapes (also under ZeRO-3, whose parameters hold no data)."""
        parameters = self.parameters_by_unwrapped_name()
        return {name: full_shape(parameters[name]) for name in self.delta_parameter_names()}

    def parameters_by_unwrapped_name(self) -> dict[str, nn.Parameter]:
        """Every parameter of the model (the frozen base's too) by the name the unwrapped model gives it."""
        return {clean_parameter_name(name): parameter for name, parameter in self.named_parameters()}

    def delta_state_dict(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The delta's tensors, taken from ``state_dict`` when given (Trainer passes the one FSDP or DeepSpeed gathers,
        whose names carry no wrapper segments)."""
        names = self.delta_parameter_names()
        declared = set(names)
        undeclared = [name for name, parameter in self.parameters_by_unwrapped_name().items()
                      if parameter.requires_grad and name not in declared]
        if undeclared:  # trained but never saved: a method forgot to list it in adapter_params()
            raise RuntimeError(f"{type(self).__name__} trains parameters no DeltaModule declares: {undeclared[:3]}")
        state_dict = self.state_dict() if state_dict is None else state_dict
        return {name: state_dict[name].detach().contiguous().cpu() for name in names}

    def load_delta_file(self, path: str) -> None:
        """Load the delta's weights from a safetensors file, refusing wrong names, shapes or a damaged file."""
        self.load_delta_state_dict(load_tensors(path), source=path)

    def load_delta_state_dict(self, state_dict: dict[str, torch.Tensor], source: str = "the given weights") -> None:
        """Copy ``state_dict`` into the delta's parameters; names and shapes must match exactly."""
        parameters = self.parameters_by_unwrapped_name()
        compare_shapes(self.delta_shapes(), {name: tuple(tensor.shape) for name, tensor in state_dict.items()}, source)
        with torch.no_grad():
            for name, tensor in state_dict.items():
                parameters[name].copy_(tensor)

    # ------------------------------------------------------------------------------------------ save and load
    def save_pretrained(self, save_directory, state_dict: dict | None = None, is_main_process: bool = True, **kwargs):
        """Write ``config.json`` and only the delta's weights (safetensors) to ``save_directory``."""
        from safetensors.torch import save_file

        if os.path.isfile(save_directory):
            raise NotADirectoryError(f"cannot save into {save_directory}: it is a file, not a folder")
        if not is_main_process:
            return
        os.makedirs(save_directory, exist_ok=True)
        self.config.save_pretrained(save_directory)
        save_file(self.delta_state_dict(state_dict), os.path.join(save_directory, DELTA_WEIGHTS_NAME), {"format": "pt"})
        if kwargs.get("push_to_hub"):
            raise ValueError("push a delta model with model.push_to_hub(repo_id), not save_pretrained(push_to_hub=True)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, base_model=None, config=None, **kwargs):
        """Rebuild base + delta from a folder (or Hub repo) written by :meth:`save_pretrained`.

        ``base_model`` supplies the base instead of loading it from ``config.base_model_name_or_path``. The keyword
        arguments are sorted as they apply (:func:`split_loading_kwargs`): ``revision`` and ``subfolder`` locate the
        delta's own files; the Hub access settings (``cache_dir``, ``local_files_only``, ``token``, ...) apply to the
        delta and the base alike; the rest (``dtype``, ``device_map``, ...) go to the base model's
        ``from_pretrained``; what the Auto classes add for their own bookkeeping goes nowhere.
        """
        from transformers.utils import cached_file

        source = str(pretrained_model_name_or_path)
        delta_kwargs, base_kwargs = split_loading_kwargs(kwargs)
        if not isinstance(config, cls.config_class):
            config = cls.config_class.from_pretrained(source, **delta_kwargs)
        weights_file = cached_file(source, DELTA_WEIGHTS_NAME, **delta_kwargs)
        if base_model is None:
            base_model = load_base_model(config, delta_source=source, **base_kwargs)
        model = cls(config, base_model=base_model)
        model.load_delta_file(weights_file)
        model.eval()
        return model

    # ------------------------------------------------------------------------------------------ delegation
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        labels=None,
        inputs_embeds=None,
        **kwargs: Any,
    ):
        return self.base(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            labels=labels,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )

    def generate(self, *args, **kwargs):
        return self.base.generate(*args, **kwargs)

    @classmethod
    def can_generate(cls) -> bool:
        return True

    @property
    def generation_config(self):
        base = self._modules.get("base")
        return None if base is None else base.generation_config

    @generation_config.setter
    def generation_config(self, value):
        base = self._modules.get("base")
        if base is not None and value is not None:
            base.generation_config = value

    def get_input_embeddings(self):
        base = self._modules.get("base")  # None while PreTrainedModel.__init__ runs
        return None if base is None else base.get_input_embeddings()

    def get_output_embeddings(self):
        base = self._modules.get("base")
        return None if base is None else base.get_output_embeddings()

    def get_encoder(self, *args, **kwargs):
        return self.base.get_encoder(*args, **kwargs)

    def get_decoder(self, *args, **kwargs):
        return self.base.get_decoder(*args, **kwargs)

    def prepare_decoder_input_ids_from_labels(self, labels):
        return self.base.prepare_decoder_input_ids_from_labels(labels)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        """Checkpoint the base's activations; inputs must require grad so the frozen base still back-propagates.
        Other keyword arguments (transformers 5.25's ``every_n_layers``, ``offload``, ...) go to the base as given."""
        self.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs)
        self.base.enable_input_require_grads()

    def gradient_checkpointing_disable(self):
        self.base.gradient_checkpointing_disable()


# from_pretrained's keyword arguments that locate the delta's own files (its repository, not the base's).
DELTA_LOCATION_KEYS = ("revision", "subfolder")
# Hub access settings that hold for the delta's files and the base's alike: the same cache, offline mode, credentials.
HUB_ACCESS_KEYS = ("cache_dir", "force_download", "local_files_only", "proxies", "token")


def split_loading_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """``from_pretrained``'s keyword arguments, split into those for the delta's files and those for the base's
    ``from_pretrained``. The Auto classes' own bookkeeping (``_from_auto``, ``trust_remote_code``, ...; see
    :func:`~hf_peft_suite.compat.without_auto_class_bookkeeping`) is dropped: the base is loaded through the Auto
    classes again, which add it again (transformers 5.25 raised ``TypeError`` when it came twice), and a delta never
    runs remote code."""
    kwargs = without_auto_class_bookkeeping(kwargs)
    access = {key: kwargs[key] for key in HUB_ACCESS_KEYS if key in kwargs}
    delta = {**access, **{key: kwargs[key] for key in DELTA_LOCATION_KEYS if key in kwargs}}
    base = {key: value for key, value in kwargs.items() if key not in DELTA_LOCATION_KEYS}
    return delta, base


def delta_config_kwargs(base_model: PreTrainedModel) -> dict:
    """The base-model fields every :class:`DeltaConfig` subclass is built with, taken from ``base_model``."""
    config = base_model.config
    return {
        "base_model_name_or_path": getattr(base_model, "name_or_path", None) or config.name_or_path,
        "base_model_config": {field: getattr(config, field) for field in ARCHITECTURE_FIELDS if hasattr(config, field)},
    }


def attach_base(config: DeltaConfig, base_model: PreTrainedModel | None = None, delta_source: str | None = None,
                **kwargs) -> PreTrainedModel:
    """The base an imported delta goes onto: ``base_model``, or the one ``config`` names (loaded with ``kwargs``).
    ``config`` then records that base's name (where it named none) and architecture."""
    if base_model is None:
        base_model = load_base_model(config, delta_source=delta_source, **kwargs)
    fields = delta_config_kwargs(base_model)
    config.base_model_config = fields["base_model_config"]
    config.base_model_name_or_path = config.base_model_name_or_path or fields["base_model_name_or_path"]
    return base_model


def check_same_architecture(config: DeltaConfig, base_config: PretrainedConfig) -> None:
    """Refuse a base whose architecture differs from the one the delta was made for."""
    saved = config.base_model_config or {}
    differences = [
        f"{field} {saved[field]} (saved) vs {getattr(base_config, field, None)} (given)"
        for field in ARCHITECTURE_FIELDS
        if field in saved and saved[field] is not None and saved[field] != getattr(base_config, field, None)
    ]
    if differences:
        raise UsageError(
            f"this {config.model_type} delta was trained on another base model ({'; '.join(differences)}); "
            f"load it onto {config.base_model_name_or_path!r} or a model with the same architecture"
        )


def resolve_base_path(name: str, delta_source: str | None) -> str:
    """``name`` as given, unless it is a relative folder next to the delta (or next to its parent: checkpoints)."""
    if delta_source and os.path.isdir(delta_source) and not os.path.isabs(name):
        for folder in (delta_source, os.path.dirname(os.path.abspath(delta_source))):
            candidate = os.path.join(folder, name)
            if os.path.isdir(candidate):
                return candidate
    return name


def load_base_model(config: DeltaConfig, delta_source: str | None = None, **kwargs) -> PreTrainedModel:
    """Load the frozen base named in ``config`` (safetensors only, never remote code)."""
    name = config.base_model_name_or_path
    if not name:
        raise UsageError(
            f"this {config.model_type} config names no base model; pass base_model=... to from_pretrained"
        )
    path = resolve_base_path(name, delta_source)
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(path, **{"use_safetensors": True, **kwargs})
    except OSError as error:
        raise UsageError(
            f"cannot load the base model {name!r} that this delta was trained on ({error}); pass "
            f"base_model=... to from_pretrained, or make {name!r} reachable (a local folder or the Hub)"
        ) from None


def register_delta_model(config_class: type[DeltaConfig], model_class: type[DeltaModel]) -> None:
    """Make ``AutoConfig`` and ``AutoModelForSeq2SeqLM`` load ``model_class`` artifacts.

    Registering again (a module reloaded) replaces the entry; a ``model_type`` that transformers itself uses raises
    transformers' ``ValueError``.
    """
    AutoConfig.register(config_class.model_type, config_class)
    AutoModelForSeq2SeqLM.register(config_class, model_class)
