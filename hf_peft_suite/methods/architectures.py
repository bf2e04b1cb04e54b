"""The encoder-decoder families the methods know, each described once: where a family keeps its layers, which of its
layers a method adapts by default, where bottleneck adapters go, and the shape of its decoder's attention.

A method asks :func:`family_of` for the base model's :class:`Family` instead of branching on model types itself.
The default targets mirror peft's per-model tables (``peft/utils/constants.py``,
``TRANSFORMERS_MODELS_TO_{LORA,IA3}_TARGET_MODULES_MAPPING`` and ``..._IA3_FEEDFORWARD_MODULES_MAPPING``), so a
default run of either implementation adapts what peft's own default config would:

============  ==================  =======================================  =======================
model type    LoRA                (IA)³ targets                            (IA)³ feed-forward
============  ==================  =======================================  =======================
``t5``        ``q v``             ``k v wo``                               ``wo``
``mt5``       ``q v``             ``k v wi_1``                             (none)
``bart``      ``q_proj v_proj``   ``q_proj v_proj fc2``                    ``fc2``
============  ==================  =======================================  =======================

T5 v1.1 and flan-t5 are ``model_type == "t5"`` (gated-gelu feed-forward ``wi_0``/``wi_1``/``wo``, untied embeddings);
their ``wo`` is there too, so T5's defaults apply. peft's mT5 row scales ``wi_1``'s output, which (as the gated
feed-forward multiplies it into ``act(wi_0 x)``) rescales the same activations the paper's ``l_ff`` does; peft's BART
row rescales queries, not keys, unlike the paper's keys and values. Both are kept as peft has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError


@dataclass(frozen=True)
class AdapterPlacement:
    """Where a family's bottleneck adapters go and how AdapterHub names them.

    Attributes:
        style: ``"pre_norm"`` (T5: each sublayer module ends in a residual addition; the adapter hooks the sublayer
            or its ``dropout``) or ``"post_norm"`` (BART: each sublayer ends in ``LayerNorm(residual + output)``; the
            adapter hooks that LayerNorm).
        sublayers: per placement name (``self_attention``, ``feed_forward``) the module inside a layer that the
            adapter follows: a child index of ``layer`` for T5, the LayerNorm's attribute name for BART.
        layer_norms: post-norm only: every LayerNorm of a layer, in order (each closes a sublayer; the residual
            stream entering the next sublayer is its output).
        adapterhub_containers: post-norm only: AdapterHub's module holding the adapter for each placement.
    """

    style: str
    sublayers: dict[str, object]
    layer_norms: tuple[str, ...] = ()
    adapterhub_containers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """One encoder-decoder family: its layout and the defaults the methods take from it."""

    name: str
    model_type: str
    examples: str
    encoder_layers: str  # dotted path of the encoder's layer list inside the ...ForConditionalGeneration model
    decoder_layers: str
    lora_targets: tuple[str, ...]
    ia3_targets: tuple[str, ...]
    ia3_feedforward: tuple[str, ...]
    adapters: AdapterPlacement
    # Config field names of the decoder's attention: layers, heads, and per-head width (None: d_model / heads).
    decoder_layers_field: str = "num_decoder_layers"
    decoder_heads_field: str = "num_heads"
    head_dim_field: str | None = "d_kv"

    def layers(self, model) -> list:
        """Every encoder layer, then every decoder layer, of ``model`` (a ...ForConditionalGeneration)."""
        return [*model.get_submodule(self.encoder_layers), *model.get_submodule(self.decoder_layers)]

    def decoder_attention(self, config) -> tuple[int, int, int]:
        """``(layers, heads, head_dim)`` of the decoder's self-attention: what a key/value prefix must match."""
        heads = getattr(config, self.decoder_heads_field)
        head_dim = getattr(config, self.head_dim_field) if self.head_dim_field else config.d_model // heads
        return getattr(config, self.decoder_layers_field), heads, head_dim


T5_ADAPTERS = AdapterPlacement(style="pre_norm", sublayers={"self_attention": 0, "feed_forward": -1})

FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family(
            name="T5", model_type="t5", examples="t5-small, t5-base, google/t5-v1_1-*, google/flan-t5-*",
            encoder_layers="encoder.block", decoder_layers="decoder.block",
            lora_targets=("q", "v"), ia3_targets=("k", "v", "wo"), ia3_feedforward=("wo",), adapters=T5_ADAPTERS,
        ),
        Family(
            name="mT5", model_type="mt5", examples="google/mt5-small, ...",
            encoder_layers="encoder.block", decoder_layers="decoder.block",
            lora_targets=("q", "v"), ia3_targets=("k", "v", "wi_1"), ia3_feedforward=(), adapters=T5_ADAPTERS,
        ),
        Family(
            name="BART", model_type="bart", examples="facebook/bart-base, facebook/bart-large, ...",
            encoder_layers="model.encoder.layers", decoder_layers="model.decoder.layers",
            lora_targets=("q_proj", "v_proj"), ia3_targets=("q_proj", "v_proj", "fc2"), ia3_feedforward=("fc2",),
            adapters=AdapterPlacement(
                style="post_norm",
                sublayers={"self_attention": "self_attn_layer_norm", "feed_forward": "final_layer_norm"},
                layer_norms=("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"),
                adapterhub_containers={"self_attention": "attention_adapters", "feed_forward": "output_adapters"},
            ),
            decoder_layers_field="decoder_layers", decoder_heads_field="decoder_attention_heads", head_dim_field=None,
        ),
    )
}


def supported_families() -> str:
    """``"T5 (t5-small, ...), mT5 (...), BART (...)"``: what the error messages offer."""
    return "; ".join(f"{family.name} ({family.examples})" for family in FAMILIES.values())


def model_type_of(model) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or "?"


def family_of(model, method: str, why: str = "") -> Family:
    """The :class:`Family` of ``model``; a :class:`UsageError` naming the supported families when it has none.

    ``method`` and ``why`` complete the message: ``--method adapter places adapters by family`` ...
    """
    family = FAMILIES.get(model_type_of(model))
    if family is None:
        reason = f" ({why})" if why else ""
        raise UsageError(
            f"--method {method}{reason} supports the encoder-decoder families {supported_families()}; the base model "
            f"is a {type(model).__name__} (model_type {model_type_of(model)!r})"
        )
    return family
