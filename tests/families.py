"""Tiny random models of every encoder-decoder family the methods support, built from configs (no download).

All share the tiny tokenizer's vocabulary (71 tokens, ``<pad>`` 0, ``</s>`` 1) and ``d_model`` 64 with two encoder
and two decoder layers, as ``hf_peft_suite.tiny`` builds its T5. What makes each family itself is kept:

* ``t5``: t5-small's conventions (ReLU feed-forward ``wi``/``wo``, tied embeddings);
* ``t5_v1_1``: T5 v1.1 / flan-t5 (gated-gelu ``wi_0``/``wi_1``/``wo``, untied LM head), with an attention inner
  width ``heads * d_kv = 32`` that differs from ``d_model``, as in flan-t5-small (6 * 64 = 384 against 512);
* ``mt5``: ``MT5Config`` (gated-gelu, untied);
* ``bart``: ``BartConfig`` (post-norm layers, learned positions, biases, tied embeddings).
"""

from __future__ import annotations

import torch

from hf_peft_suite.tiny import build_tiny_model, tiny_t5_config

FAMILIES = ("t5", "t5_v1_1", "mt5", "bart")
VOCAB_SIZE = 71


def family_config(family: str):
    from transformers import BartConfig, MT5Config

    if family == "t5":
        return tiny_t5_config()
    if family in ("t5_v1_1", "mt5"):
        config_class = MT5Config if family == "mt5" else type(tiny_t5_config())
        settings = tiny_t5_config().to_dict()
        settings.update(feed_forward_proj="gated-gelu", tie_word_embeddings=False, d_kv=8)
        for key in ("model_type", "transformers_version", "architectures", "is_gated_act", "dense_act_fn"):
            settings.pop(key, None)
        return config_class(**settings)
    if family == "bart":
        return BartConfig(
            vocab_size=VOCAB_SIZE, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=0, eos_token_id=1, bos_token_id=0,
            decoder_start_token_id=0, forced_bos_token_id=None, forced_eos_token_id=None,
        )
    raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")


def build_family_model(family: str, seed: int = 0):
    """A tiny random ``...ForConditionalGeneration`` of ``family``; the same seed gives the same weights."""
    if family == "t5":
        return build_tiny_model(seed=seed)
    from transformers import AutoModelForSeq2SeqLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSeq2SeqLM.from_config(family_config(family))
    model.generation_config.update(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, bos_token_id=None,
                                   forced_bos_token_id=None, forced_eos_token_id=None)
    return model
