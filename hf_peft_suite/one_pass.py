"""One encoder pass per evaluation batch: the encoder output that ``generate`` computes also gives ``eval_loss``.

``Seq2SeqTrainer.prediction_step`` runs ``model.generate(**inputs)`` and then a second full ``model(**inputs)`` for
the loss, so the encoder, which is nearly all of the cost (256 source tokens against 2 target tokens), runs twice.
Here a forward hook on the model's encoder keeps what ``generate`` computed (its output and the attention mask it was
given, which for prompt tuning includes the prompt's positions), and the loss comes from a decoder-only pass over it
that also reuses the cross-attention keys and values ``generate`` projected from it (its cache), so the decoder does
not project the 256 encoder states a second time either.

This works the same way for every cell, because every cell's ``generate`` calls ``model.get_encoder()``: the base
model (full fine-tuning, AdapterHub), a scratch delta (:class:`~hf_peft_suite.methods.delta.DeltaModel` delegates to
its base; ``SoftPromptModel`` prepends its prompt before the encoder) and peft (LoRA and the other weight-changing
tuners; prompt tuning and p-tuning prepend their prompt before the base model's ``generate``). The decoder pass goes
through the model that decodes: the model itself, or for peft the base model inside it (peft's forward would prepend
the prompt again). Cells whose prompt lives in the attention's keys and values (peft prefix tuning) are not
reusable this way: :func:`reusable` says so and the trainer falls back to two passes.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch
from torch.nn import functional
from transformers.modeling_outputs import BaseModelOutput

from .compat import cache_layer_keys

# peft tuners that change the encoder's input embeddings before generate() reaches the base model
PEFT_INPUT_PROMPTS = ("PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING")


def _peft_config(model):
    """The active peft config of a ``PeftModel`` (``None`` for any other model; peft is not imported for it)."""
    if "peft" not in sys.modules:
        return None
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return None
    return model.peft_config[model.active_adapter]


def reusable(model) -> bool:
    """Whether the encoder output ``generate`` computes can give this model's loss (see the module docstring)."""
    config = _peft_config(model)
    if config is None:
        return callable(getattr(model, "get_encoder", None))
    return not config.is_prompt_learning or str(getattr(config.peft_type, "value", config.peft_type)) in PEFT_INPUT_PROMPTS


def decoding_model(model):
    """The model that computes the loss from encoder outputs: peft's base model, or the model itself."""
    return model.get_base_model() if _peft_config(model) is not None else model


@dataclass
class CapturedEncoder:
    """What the encoder computed during ``generate``: its output and the attention mask it was given."""

    outputs: BaseModelOutput | None = None
    attention_mask: torch.Tensor | None = None


@contextlib.contextmanager
def capture_encoder(model):
    """Keep the last output of ``model.get_encoder()`` (and its attention mask) while the block runs."""
    captured = CapturedEncoder()

    def keep(module, args, kwargs, output):
        captured.outputs = output if isinstance(output, BaseModelOutput) else BaseModelOutput(last_hidden_state=output[0])
        captured.attention_mask = kwargs.get("attention_mask")

    handle = model.get_encoder().register_forward_hook(keep, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def reusable_cross_attention(generate_output, batch_size: int):
    """The decoder's cross-attention keys and values ``generate`` computed over the encoder output, as a cache the
    loss pass can start from, so it does not project the encoder output again (a sixth of the encoder's own cost in
    t5-small). ``None`` where there is none to reuse (no cache, or beams: its rows are not the batch's)."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    cache = getattr(generate_output, "past_key_values", None)
    cross = getattr(cache, "cross_attention_cache", None)
    if cross is None or cross.get_seq_length() == 0:
        return None
    if cache_layer_keys(cross, 0).shape[0] != batch_size:
        return None
    return EncoderDecoderCache(DynamicCache(), cross)


def label_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example, the summed cross-entropy of its label tokens and how many there are: ``(batch, 2)``, float32.

    Summed over a whole evaluation set and divided, they give the mean cross-entropy per label token, which does not
    depend on how examples are batched or spread over processes (what T5's own loss is, batch by batch).
    """
    token_losses = functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )
    counts = (labels != -100).sum(dim=1)
    return torch.stack([token_losses.sum(dim=1), counts.float()], dim=1)
