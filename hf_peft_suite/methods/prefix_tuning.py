"""Prefix tuning: trained key/value prefixes in the decoder's self-attention, from scratch and with HF ``peft``.

Li and Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation" (ACL 2021),
https://arxiv.org/abs/2101.00190. Every attention layer it touches attends over ``n`` extra key/value positions
whose keys and values are trained directly, not computed from any token::

    head_h(x) = softmax(q_h [P_k,h ; K_h]^T) [P_v,h ; V_h]        P_k, P_v in R^{n x d_head} per layer and head

Optionally (the paper's reparametrisation, ``--prefix_projection true``) the prefixes of all layers come out of a
two-layer MLP, ``P = W_2 tanh(W_1 E + b_1) + b_2`` over ``n`` trained embeddings ``E`` of width ``heads * d_head``;
the MLP is only a training device, and what a saved peft adapter keeps is ``P``.

**Which attention layers get prefixes.** peft 0.21 (its ``PeftModelForSeq2SeqLM`` and ``get_prompt``) hands the
prefix to the model as the decoder's ``past_key_values``: only the **decoder's self-attention** reads it. The encoder
never receives a cache, and peft empties the cross-attention half of the cache it builds. The scratch
implementation does the same, so the two are equal; Li and Liang's BART version also prefixed the encoder and the
cross-attention, which neither does here.

**peft's seq2seq layout.** The prefix encoder outputs ``2 L`` rows of ``heads * d_head`` values per virtual token
(L = decoder layers). For seq2seq, peft (``num_transformer_submodules=2``) duplicates them to ``4 L`` rows, splits
those into groups of four per layer (self key, self value, cross key, cross value) and drops the cross half. So
decoder layer ``l`` reads rows ``4l mod 2L`` (keys) and ``4l + 1 mod 2L`` (values): on t5-small's 6 decoder layers,
layers 3-5 reuse the prefixes of layers 0-2, and rows 2, 3, 6, 7, 10, 11, half of the trained values, never reach
the model (their gradient is zero). :func:`peft_layer_rows` reproduces this, so the scratch model is peft's model
and both report the same count: ``n * 2 * L * heads * d_head`` (t5-small, 20 tokens: 20 * 2 * 6 * 512 = 122,880).
peft's ``num_transformer_submodules=1`` (one copy, every row used) does not work on encoder-decoders: the cache it
builds is then shared by self- and cross-attention.

**Differences from prompt tuning** (``--method prompt_tuning``): prompt tuning prepends ``n`` trained *embeddings* to
the encoder's input, which every encoder layer then transforms; prefix tuning gives every decoder layer its own
trained *keys and values* (no token, no embedding, nothing computed from them), ``2 L`` times as many numbers per
virtual token at equal width. The encoder's input and attention mask are untouched.

Two implementations, configured by the same :class:`PrefixTuningOptions`:

* ``scratch``: :class:`PrefixEncoder` (the trained tensor, or the embeddings and MLP) in :class:`PrefixTuningModel`,
  a :class:`~hf_peft_suite.methods.delta.DeltaModel` that builds the decoder's cache from the prefix in ``forward``
  and at the first step of ``generate``. No peft import.
* ``library``: ``peft.get_peft_model`` with ``PrefixTuningConfig`` (layers, heads and width set from the family's
  decoder, so T5 v1.1 / flan-t5, whose attention width ``heads * d_kv`` differs from ``d_model``, work too).

**Generation.** peft 0.21's seq2seq prefix ``generate`` disagrees with its own ``forward``: on transformers 4.57 the
decoder reads its first generated position as 0 while the prefix already fills positions 0..n-1 (``forward`` puts
the first token at n), and on transformers 5 the prefix it puts in the generation inputs is dropped (the cache
argument is now ``cache``), so it generates as the bare base. Both implementations here generate through
:func:`prefixed_generation_inputs`: the prefix enters the cache at the first step and, where transformers uses
``cache_position``, positions are counted after it, as ``forward`` counts them. The library cell gets it through
:func:`fix_peft_prefix_generation` (also what a model card's loading code calls). Greedy and beam search then equal
step-by-step ``forward`` decoding, in both implementations.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from ..compat import average_loss_per_batch, cache_argument, peft_prefix_generation_hooks
from ..errors import UsageError
from .architectures import family_of
from .base import Method, Recommended
from .delta import (
    DeltaConfig,
    DeltaModel,
    attach_base,
    delta_config_kwargs,
    register_delta_model,
)
from .formats import PEFT_LIBRARY, SCRATCH_DELTA, PeftAdapterFormat
from .peft_files import read_peft_adapter, write_peft_adapter

PEFT_PREFIX_KEY = "prompt_embeddings"  # the one tensor peft saves for a prefix-tuning adapter: the prefix itself


@dataclass
class PrefixTuningOptions:
    """Options of ``--method prefix_tuning``, shared by both implementations."""

    prefix_num_virtual_tokens: int = field(
        default=20,
        metadata={"help": "Number n of prefix positions each decoder self-attention layer attends over (trainable: "
                  "n * 2 * decoder layers * heads * head width)."},
    )
    prefix_projection: bool = field(
        default=False,
        metadata={"help": "Li & Liang's reparametrisation: the prefixes come out of a two-layer MLP over n trained "
                  "embeddings (more parameters while training; the saved prefix is the same size)."},
    )
    prefix_projection_hidden_size: Optional[int] = field(
        default=None,
        metadata={"help": "Hidden width of that MLP (default: the attention width heads * head width, as peft)."},
    )

    def __post_init__(self):
        for name in ("prefix_num_virtual_tokens", "prefix_projection_hidden_size"):
            value = getattr(self, name)
            if name.endswith("hidden_size") and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UsageError(f"--{name} must be a positive integer, got {value!r}; e.g. --{name} 20")
        if not isinstance(self.prefix_projection, bool):
            raise UsageError(f"--prefix_projection takes true or false (got {self.prefix_projection!r})")
        if self.prefix_projection_hidden_size is not None and not self.prefix_projection:
            raise UsageError("--prefix_projection_hidden_size sizes the MLP of --prefix_projection true; add it, or "
                             "leave the hidden size out")


# ----------------------------------------------------------------------------------------------- the layout
def peft_layer_rows(num_layers: int) -> list[tuple[int, int]]:
    """``(key row, value row)`` of the ``2 L`` prefix rows that decoder layer ``l`` reads in peft's seq2seq layout
    (``num_transformer_submodules=2``): ``(4l mod 2L, 4l + 1 mod 2L)``. See the module docstring."""
    return [((4 * layer) % (2 * num_layers), (4 * layer + 1) % (2 * num_layers)) for layer in range(num_layers)]


class PrefixEncoder(nn.Module):
    """The trained prefix: ``n`` rows of ``2 L`` key/value vectors of width ``heads * head_dim``.

    Without projection it is one tensor (``embedding.weight``, ``n x 2 L heads head_dim``, N(0, 1) as peft's
    ``nn.Embedding``); with ``projection_hidden_size`` it is ``transform(embedding.weight)``, a Linear-Tanh-Linear MLP
    over ``n`` embeddings of width ``heads * head_dim``. Modules are created in peft's order, so the same seed draws
    the same initial values.
    """

    def __init__(self, num_virtual_tokens: int, num_layers: int, num_heads: int, head_dim: int,
                 projection_hidden_size: int | None = None):
        super().__init__()
        for name, value in (("num_virtual_tokens", num_virtual_tokens), ("num_layers", num_layers),
                            ("num_heads", num_heads), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.num_virtual_tokens, self.num_layers, self.num_heads, self.head_dim = (
            num_virtual_tokens, num_layers, num_heads, head_dim)
        token_dim = num_heads * head_dim
        width = num_layers * 2 * token_dim
        if projection_hidden_size:
            self.embedding = nn.Embedding(num_virtual_tokens, token_dim)
            self.transform = nn.Sequential(
                nn.Linear(token_dim, projection_hidden_size), nn.Tanh(), nn.Linear(projection_hidden_size, width)
            )
        else:
            self.embedding = nn.Embedding(num_virtual_tokens, width)
            self.transform = None

    def adapter_params(self) -> list[str]:
        """The trained parameters (the :class:`~hf_peft_suite.methods.delta.DeltaModule` protocol)."""
        return [name for name, _ in self.named_parameters()]

    def forward(self, batch_size: int) -> torch.Tensor:
        """The prefix for a batch, ``batch x n x 2 L heads head_dim`` (computed per example, as peft does)."""
        tokens = torch.arange(self.num_virtual_tokens, device=self.embedding.weight.device)
        prefix = self.embedding(tokens.unsqueeze(0).expand(batch_size, -1))
        return prefix if self.transform is None else self.transform(prefix)

    def prefix(self) -> torch.Tensor:
        """The prefix itself, ``n x 2 L heads head_dim``: what a peft adapter saves."""
        return self.forward(1)[0]

    def decoder_cache(self, batch_size: int, dtype: torch.dtype | None = None, cross_attention=None):
        """An ``EncoderDecoderCache`` whose self-attention part holds each decoder layer's prefix (peft's layout)
        and whose cross-attention part is ``cross_attention`` (keys and values already projected from the encoder
        output, e.g. by ``generate``) or empty."""
        from transformers import DynamicCache, EncoderDecoderCache

        prefix = self(batch_size)
        if dtype is not None:
            prefix = prefix.to(dtype)
        rows = prefix.view(batch_size, self.num_virtual_tokens, 2 * self.num_layers, self.num_heads, self.head_dim)
        layers = [(rows[:, :, key].transpose(1, 2), rows[:, :, value].transpose(1, 2))
                  for key, value in peft_layer_rows(self.num_layers)]
        cross_attention = cross_attention if cross_attention is not None else DynamicCache()
        return EncoderDecoderCache(DynamicCache(layers), cross_attention)


# ----------------------------------------------------------------------------------------------- generation
def prefixed_generation_inputs(prepare, build_cache, num_virtual_tokens: int, cache_key: str, *args, **kwargs):
    """A model's ``prepare_inputs_for_generation`` (``prepare``) with the prefix put in.

    At the first step (no cache yet, or an empty one) the cache becomes ``build_cache(batch)``; where transformers
    counts positions with ``cache_position`` (4.57), positions start after the prefix, as in ``forward``.
    """
    inputs = prepare(*args, **kwargs)
    key = cache_key if cache_key in inputs or "past_key_values" not in inputs else "past_key_values"
    cache = inputs.get(key)
    if cache is None or cache.get_seq_length() == 0:
        inputs[key] = build_cache(inputs["decoder_input_ids"].shape[0])
    if inputs.get("cache_position") is not None:
        inputs["cache_position"] = inputs["cache_position"] + num_virtual_tokens
    return inputs


def fix_peft_prefix_generation(model) -> None:
    """Make a peft prefix-tuning model (``PeftModelForSeq2SeqLM``) generate as its ``forward`` computes (see the
    module docstring); other peft models are left alone. peft's ``generate`` installs the model's
    ``prepare_inputs_for_generation`` on the base for the call, so an instance attribute replaces its own."""
    config = model.active_peft_config
    if str(getattr(config.peft_type, "value", config.peft_type)) != "PREFIX_TUNING":
        return
    prepare, get_prompt, num_virtual_tokens = peft_prefix_generation_hooks(model)
    model.prepare_inputs_for_generation = functools.partial(
        prefixed_generation_inputs, prepare, get_prompt, num_virtual_tokens, cache_argument(model.get_base_model()),
    )


# ----------------------------------------------------------------------------------------------- scratch
class PrefixTuningConfig(DeltaConfig):
    """A frozen seq2seq base plus a decoder key/value prefix: its length and the MLP's hidden width (0: none)."""

    model_type = "hf_peft_suite_prefix_tuning"

    def __init__(self, prefix_num_virtual_tokens: int = 20, prefix_projection_hidden_size: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.prefix_num_virtual_tokens = prefix_num_virtual_tokens
        self.prefix_projection_hidden_size = prefix_projection_hidden_size


class PrefixTuningModel(DeltaModel):
    """A frozen seq2seq model whose decoder self-attention layers attend over a trained prefix first.

    ``forward`` passes the prefix as the decoder's cache (and puts ones before a given ``decoder_attention_mask``);
    ``generate`` puts it in at the first step. The encoder and its mask are untouched.
    """

    config_class = PrefixTuningConfig

    def __init__(self, config: PrefixTuningConfig, base_model=None):
        super().__init__(config, base_model)
        num_layers, num_heads, head_dim = decoder_geometry(self.base)
        self.prefix_encoder = PrefixEncoder(config.prefix_num_virtual_tokens, num_layers, num_heads, head_dim,
                                            config.prefix_projection_hidden_size or None)
        self.prefix_encoder.to(self.base.device)

    @property
    def num_virtual_tokens(self) -> int:
        return self.prefix_encoder.num_virtual_tokens

    def decoder_cache(self, batch_size: int, cross_attention=None):
        return self.prefix_encoder.decoder_cache(batch_size, dtype=self.base.dtype, cross_attention=cross_attention)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                labels=None, inputs_embeds=None, **kwargs):
        given = [tensor for tensor in (input_ids, inputs_embeds, decoder_input_ids, labels) if tensor is not None]
        if kwargs.get("encoder_outputs") is not None:  # e.g. the one-pass evaluation's decoder-only pass
            given.append(kwargs["encoder_outputs"][0])
        if not given:
            raise ValueError("pass input_ids, inputs_embeds, encoder_outputs, decoder_input_ids or labels")
        batch_size = given[0].shape[0]
        given = kwargs.pop("cache", None) or kwargs.pop("past_key_values", None)
        if given is not None and given.get_seq_length() > 0:  # a continuation: the cache already holds the prefix
            kwargs[cache_argument(self.base)] = given
            return super().forward(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, labels,
                                   inputs_embeds, **kwargs)
        if decoder_attention_mask is not None:
            ones = decoder_attention_mask.new_ones(batch_size, self.num_virtual_tokens)
            decoder_attention_mask = torch.cat([ones, decoder_attention_mask], dim=1)
        # A given cache with only cross-attention keys and values (the one-pass evaluation's) is kept under the prefix.
        kwargs[cache_argument(self.base)] = self.decoder_cache(
            batch_size, cross_attention=getattr(given, "cross_attention_cache", None))
        return super().forward(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, labels,
                               inputs_embeds, **kwargs)

    def generate(self, *args, **kwargs):
        """The base's ``generate`` (greedy, beam, sampling) with the prefix in the decoder's cache."""
        base = self.base
        base.prepare_inputs_for_generation = functools.partial(
            prefixed_generation_inputs, type(base).prepare_inputs_for_generation.__get__(base), self.decoder_cache,
            self.num_virtual_tokens, cache_argument(base),
        )
        try:
            return base.generate(*args, **kwargs)
        finally:
            del base.prepare_inputs_for_generation

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        raise UsageError(
            "prefix tuning does not work with --gradient_checkpointing: the prefix lives in the decoder's cache, which "
            "recomputed layers would extend twice (peft refuses it too); train without gradient checkpointing"
        )


register_delta_model(PrefixTuningConfig, PrefixTuningModel)


def decoder_geometry(base_model) -> tuple[int, int, int]:
    """``(layers, heads, head_dim)`` of ``base_model``'s decoder; a :class:`UsageError` for unsupported families."""
    family = family_of(base_model, "prefix_tuning", "the prefix is shaped after the decoder's attention")
    return family.decoder_attention(base_model.config)


def projection_width(options: PrefixTuningOptions, base_model) -> int:
    """The MLP's hidden width (0 without projection); by default the attention width, as peft's default."""
    if not options.prefix_projection:
        return 0
    _, num_heads, head_dim = decoder_geometry(base_model)
    return options.prefix_projection_hidden_size or num_heads * head_dim


def build_scratch(base_model, options: PrefixTuningOptions | None = None, tokenizer=None) -> PrefixTuningModel:
    """Freeze ``base_model`` and give its decoder a trained prefix."""
    options = options if options is not None else PrefixTuningOptions()
    decoder_geometry(base_model)
    config = PrefixTuningConfig(
        prefix_num_virtual_tokens=options.prefix_num_virtual_tokens,
        prefix_projection_hidden_size=projection_width(options, base_model),
        **delta_config_kwargs(base_model),
    )
    return PrefixTuningModel(config, base_model)


# ----------------------------------------------------------------------------------------------- library
def peft_prefix_config(num_virtual_tokens: int, base_model, projection_hidden_size: int = 0,
                       base_model_name_or_path: str | None = None):
    """peft's ``PrefixTuningConfig`` for ``base_model``: layers, heads and width from its decoder, seq2seq layout."""
    from peft import PrefixTuningConfig as PeftPrefixTuningConfig
    from peft import TaskType

    num_layers, num_heads, head_dim = decoder_geometry(base_model)
    return PeftPrefixTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=num_virtual_tokens,
        num_layers=num_layers,
        token_dim=num_heads * head_dim,
        num_attention_heads=num_heads,
        num_transformer_submodules=2,  # peft's seq2seq default; 1 breaks encoder-decoders (module docstring)
        prefix_projection=bool(projection_hidden_size),
        encoder_hidden_size=projection_hidden_size or num_heads * head_dim,
        base_model_name_or_path=base_model_name_or_path,
    )


def build_library(base_model, options: PrefixTuningOptions | None = None, tokenizer=None):
    """``get_peft_model(base_model, PrefixTuningConfig(...))``, generating as its forward computes."""
    from peft import get_peft_model

    options = options if options is not None else PrefixTuningOptions()
    config = peft_prefix_config(options.prefix_num_virtual_tokens, base_model, projection_width(options, base_model))
    model = get_peft_model(base_model, config)
    average_loss_per_batch(model.get_base_model())  # Trainer reads it from the unwrapped base
    fix_peft_prefix_generation(model)
    return model


class PeftPrefixFormat(PeftAdapterFormat):
    """peft's adapter format, refusing to resume a projected prefix: peft saves the prefix its MLP computed, not the
    MLP, so a checkpoint of ``--prefix_projection true`` cannot be trained further."""

    def reload_problem(self, model) -> str | None:
        if model.peft_config["default"].prefix_projection:
            return ("peft saves a prefix-tuning adapter as the prefix its MLP computed, not the MLP "
                    "(--prefix_projection true), so a checkpoint cannot be loaded back into the model that trains; "
                    "use --implementation scratch, which saves the MLP")
        return None

    def check(self, model, directory: str) -> None:
        problem = self.reload_problem(model)
        if problem:
            raise UsageError(problem)
        super().check(model, directory)

    def load_trained(self, directory: str, base):
        """peft's ``PeftModel.from_pretrained``, then :func:`fix_peft_prefix_generation` (what a model card does)."""
        model = super().load_trained(directory, base)
        fix_peft_prefix_generation(model)
        return model


PEFT_PREFIX = PeftPrefixFormat()


# ----------------------------------------------------------------------------------------------- interop
def export_to_peft(model: PrefixTuningModel, directory) -> None:
    """Write ``model``'s prefix as a peft prefix-tuning adapter (``PeftModel.from_pretrained(base, directory)`` loads
    it; call :func:`fix_peft_prefix_generation` on the result before ``generate``). With a projection MLP, the prefix
    it computes is written, as peft's ``save_pretrained`` does."""
    if not isinstance(model, PrefixTuningModel):
        raise UsageError(
            f"export_to_peft takes a PrefixTuningModel (scratch prefix tuning), not {type(model).__name__}"
        )
    config = model.config
    peft_config = peft_prefix_config(config.prefix_num_virtual_tokens, model.base,
                                     config.prefix_projection_hidden_size, config.base_model_name_or_path)
    with torch.no_grad():
        write_peft_adapter(directory, peft_config, {PEFT_PREFIX_KEY: model.prefix_encoder.prefix()})


def import_from_peft(directory, base_model=None) -> PrefixTuningModel:
    """A :class:`PrefixTuningModel` from a peft seq2seq prefix-tuning adapter, onto ``base_model`` or the base it
    names. A projected adapter holds only the prefix its MLP computed; it is imported as that prefix (same outputs,
    no MLP to train further)."""
    adapter = read_peft_adapter(directory, "PREFIX_TUNING", "prefix tuning")
    saved = adapter.config
    if (saved.get("num_transformer_submodules") or 2) != 2:
        raise UsageError(f"{adapter.config_path} has num_transformer_submodules={saved['num_transformer_submodules']}; "
                         f"peft's seq2seq prefix layout (2) is the one that works on encoder-decoders")
    prefix = adapter.weights.get(PEFT_PREFIX_KEY)
    if prefix is None or len(adapter.weights) != 1:
        raise UsageError(f"{adapter.weights_path} should hold one {PEFT_PREFIX_KEY!r} tensor, the prefix; it holds "
                         f"{sorted(adapter.weights)}")
    config = PrefixTuningConfig(prefix_num_virtual_tokens=saved["num_virtual_tokens"],
                                base_model_name_or_path=saved.get("base_model_name_or_path"))
    base_model = attach_base(config, base_model, delta_source=str(directory))
    num_layers, num_heads, head_dim = decoder_geometry(base_model)
    expected = (saved["num_virtual_tokens"], num_layers * 2 * num_heads * head_dim)
    if tuple(prefix.shape) != expected or (saved.get("num_layers"), saved.get("token_dim")) != (
            num_layers, num_heads * head_dim):
        raise UsageError(
            f"{directory}: the prefix has shape {tuple(prefix.shape)} for {saved.get('num_layers')} layers of width "
            f"{saved.get('token_dim')}, but this base's decoder needs {expected} ({num_layers} layers of width "
            f"{num_heads * head_dim}); load it onto the base it was trained on"
        )
    model = PrefixTuningModel(config, base_model)
    model.load_delta_state_dict({"prefix_encoder.embedding.weight": prefix}, source=adapter.weights_path)
    model.eval()
    return model


METHOD = Method(
    name="prefix_tuning",
    options=PrefixTuningOptions,
    recommended=Recommended(
        source="peft's seq2seq prefix-tuning example, a T5 sentiment classifier written as text-to-text like this one "
        "(examples/conditional_generation/peft_prefix_tuning_seq2seq.ipynb): 20 virtual tokens, no projection, AdamW "
        "at 1e-2 with linear decay. Li & Liang 2021 (arXiv:2101.00190) trained generation tasks with the MLP "
        "reparametrisation at 5e-5 (--prefix_projection true).",
        settings={"learning_rate": 1e-2, "lr_scheduler_type": "linear", "prefix_num_virtual_tokens": 20},
    ),
    build_scratch=build_scratch,
    scratch_format=SCRATCH_DELTA,
    build_library=build_library,
    **{**PEFT_LIBRARY, "library_format": PEFT_PREFIX},
    supports_gradient_checkpointing=False,
    library_loading_lines=(
        "hf_peft_suite.methods.prefix_tuning.fix_peft_prefix_generation(model)  # peft 0.21 generates without the "
        "prefix's positions",
    ),
)
