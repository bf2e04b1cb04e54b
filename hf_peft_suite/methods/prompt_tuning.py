"""Soft prompt tuning: a learned prompt of ``n`` embeddings prepended to the encoder's input, everything else frozen.

Lester, Al-Rfou and Constant, "The Power of Scale for Parameter-Efficient Prompt Tuning" (EMNLP 2021),
https://arxiv.org/abs/2104.08691.

For input tokens ``x_1 .. x_m`` with embeddings ``E = [e(x_1); ..; e(x_m)]`` (``m x d``) and attention mask ``M``, the
encoder of the frozen seq2seq model reads::

    inputs_embeds  = [P; E]      P in R^{n x d}, the only trained tensor
    attention_mask = [1_n; M]    the prompt is always attended; the decoder's mask is untouched

Trainable parameters: ``n * d_model`` (t5-small, 20 tokens: 20 * 512 = 10,240).

Two implementations, configured by the same :class:`PromptTuningOptions`:

* ``scratch``: :class:`SoftPrompt` (the tensor ``P`` and the concatenation) inside :class:`SoftPromptModel`, a
  :class:`~hf_peft_suite.methods.delta.DeltaModel` whose ``forward`` and ``generate`` prepend the prompt. No peft.
* ``library``: peft's ``PromptTuningConfig(task_type=SEQ_2_SEQ_LM, num_transformer_submodules=1)``. With peft's
  seq2seq default (``num_transformer_submodules=2``) peft also allocates a decoder prompt that its prompt-tuning
  forward never reads, and reports twice the trainable parameters (20,480 for 20 tokens on t5-small).

Both follow peft's ``PeftModelForSeq2SeqLM`` (``forward``/``generate`` for ``PROMPT_TUNING``) and ``PromptEmbedding``:
the prompt goes before the word embeddings of ``input_ids``, the mask gets ones in front, the prompt is cast to the
embeddings' dtype, and the three initialisations draw from the random generator in the same order, so the same seed
gives the same initial prompt in both.

:func:`export_to_peft` writes a scratch prompt as a peft adapter (``PeftModel.from_pretrained`` loads it);
:func:`import_from_peft` reads a peft prompt-tuning adapter into a :class:`SoftPromptModel`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from ..compat import average_loss_per_batch, peft_prompt_embedding
from ..errors import UsageError
from ..files import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME
from ..weights import load_tensors
from .base import Method, Recommended
from .delta import (
    DeltaConfig,
    DeltaModel,
    attach_base,
    delta_config_kwargs,
    register_delta_model,
)
from .formats import PEFT_LIBRARY, SCRATCH_DELTA
from .sharding import gathered

PROMPT_INITS = ("random", "vocab", "text")
# Our init names -> peft's PromptTuningInit values.
PEFT_PROMPT_INITS = {"random": "RANDOM", "vocab": "SAMPLE_VOCAB", "text": "TEXT"}
PEFT_PROMPT_KEY = "prompt_embeddings"  # the one tensor peft saves for a prompt-tuning adapter


@dataclass
class PromptTuningOptions:
    """Options of ``--method prompt_tuning``, shared by both implementations."""

    num_virtual_tokens: int = field(
        default=20,
        metadata={
            "help": "Length n of the soft prompt prepended to the encoder input (trainable parameters: n * d_model). "
            "It comes on top of --max_source_length: the encoder reads up to max_source_length + n positions."
        },
    )
    prompt_init: str = field(
        default="vocab",
        metadata={
            "help": "How the prompt starts: 'random' (N(0, 1), peft's RANDOM), 'vocab' (embeddings of tokens drawn "
            "uniformly from the vocabulary, peft's SAMPLE_VOCAB) or 'text' (the embeddings of --prompt_init_text, "
            "tiled or cut to n tokens, peft's TEXT)."
        },
    )
    prompt_init_text: Optional[str] = field(
        default=None,
        metadata={"help": "The text whose token embeddings start the prompt with --prompt_init text, e.g. "
                  "'positive negative' (the label words, the paper's best init for small models)."},
    )


def check_num_virtual_tokens(num_virtual_tokens) -> None:
    """Refuse a prompt length that is not a positive integer."""
    if not isinstance(num_virtual_tokens, int) or isinstance(num_virtual_tokens, bool) or num_virtual_tokens <= 0:
        raise UsageError(
            f"--num_virtual_tokens must be a positive integer, got {num_virtual_tokens!r}; "
            f"use e.g. --num_virtual_tokens 20"
        )


def check_prompt_options(num_virtual_tokens, prompt_init, prompt_init_text) -> None:
    """Refuse options no prompt can be built from, naming the fix."""
    check_num_virtual_tokens(num_virtual_tokens)
    if prompt_init not in PROMPT_INITS:
        raise UsageError(f"unknown --prompt_init {prompt_init!r}; choose one of {', '.join(PROMPT_INITS)}")
    if prompt_init == "text" and not (prompt_init_text or "").strip():
        raise UsageError(
            "--prompt_init text needs the text to start from; pass --prompt_init_text, e.g. "
            "--prompt_init_text 'positive negative', or choose --prompt_init vocab"
        )


# ------------------------------------------------------------------------------------------------ initialisation
def sample_vocab_token_ids(vocab_size: int, num_virtual_tokens: int) -> torch.Tensor:
    """``num_virtual_tokens`` token ids drawn uniformly from ``[0, vocab_size)`` (peft's ``SAMPLE_VOCAB``).

    The paper samples from the 5,000 most common tokens; peft, and so this project, from the whole embedding matrix.
    """
    return torch.randint(0, vocab_size, (num_virtual_tokens,), dtype=torch.long)


def text_token_ids(tokenizer, text: str, num_virtual_tokens: int) -> list[int]:
    """The ids of ``text`` (special tokens included, as peft tokenizes it), tiled or cut to ``num_virtual_tokens``."""
    token_ids = list(tokenizer(text)["input_ids"])
    if not token_ids:
        raise UsageError(f"--prompt_init_text {text!r} gives no tokens; give a text with at least one word")
    repeats = math.ceil(num_virtual_tokens / len(token_ids))
    return (token_ids * repeats)[:num_virtual_tokens]


def initial_prompt_token_ids(options: PromptTuningOptions, tokenizer, vocab_size: int) -> torch.Tensor | None:
    """The tokens whose embeddings start the prompt: ``None`` for ``random`` (keep the N(0, 1) draw)."""
    if options.prompt_init == "vocab":
        return sample_vocab_token_ids(vocab_size, options.num_virtual_tokens)
    if options.prompt_init == "text":
        return torch.tensor(text_token_ids(tokenizer, options.prompt_init_text, options.num_virtual_tokens))
    return None


@torch.no_grad()
def init_prompt_from_token_ids(prompt: torch.Tensor, word_embeddings: nn.Embedding, token_ids: torch.Tensor) -> None:
    """Overwrite ``prompt`` (``n x d``) with the (float32) embeddings of ``token_ids`` (gathered first where DeepSpeed
    ZeRO-3 holds the embedding matrix partitioned)."""
    with gathered([word_embeddings.weight]):
        token_ids = token_ids.to(word_embeddings.weight.device)
        prompt.copy_(word_embeddings(token_ids).detach().to(device=prompt.device, dtype=torch.float32))


# ------------------------------------------------------------------------------------------------ scratch
class SoftPrompt(nn.Module):
    """The learned prompt ``P`` (``n x d``) and its prepending to a batch of input embeddings.

    ``P`` starts as an N(0, 1) draw, exactly as peft's ``torch.nn.Embedding(n, d)`` does (so ``random`` init consumes
    the random generator as peft does); :func:`init_prompt_from_token_ids` overwrites it for ``vocab``/``text``.
    """

    def __init__(self, num_virtual_tokens: int, embedding_dim: int):
        super().__init__()
        if isinstance(num_virtual_tokens, bool) or not isinstance(num_virtual_tokens, int) or num_virtual_tokens <= 0:
            raise ValueError(f"num_virtual_tokens must be a positive integer, got {num_virtual_tokens!r}")
        self.prompt_embeddings = nn.Parameter(torch.empty(num_virtual_tokens, embedding_dim))
        nn.init.normal_(self.prompt_embeddings)

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt_embeddings.shape[0]

    def adapter_params(self) -> list[str]:
        """The trained parameter (the :class:`~hf_peft_suite.methods.delta.DeltaModule` protocol)."""
        return ["prompt_embeddings"]

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """``([P; E], [1_n; M])`` for every example of the batch; the mask stays ``None`` when none is given."""
        batch_size = inputs_embeds.shape[0]
        prompt = self.prompt_embeddings.to(inputs_embeds.dtype).unsqueeze(0).expand(batch_size, -1, -1)
        inputs_embeds = torch.cat([prompt, inputs_embeds], dim=1)
        if attention_mask is not None:
            ones = attention_mask.new_ones(batch_size, self.num_virtual_tokens)
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        return inputs_embeds, attention_mask


class SoftPromptConfig(DeltaConfig):
    """A frozen seq2seq base plus a soft prompt: its length and how it was initialised (for the record)."""

    model_type = "hf_peft_suite_prompt_tuning"

    def __init__(
        self,
        num_virtual_tokens: int = 20,
        prompt_init: str = "vocab",
        prompt_init_text: str | None = None,
        tokenizer_name_or_path: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_virtual_tokens = num_virtual_tokens
        self.prompt_init = prompt_init
        self.prompt_init_text = prompt_init_text
        self.tokenizer_name_or_path = tokenizer_name_or_path


class SoftPromptModel(DeltaModel):
    """A frozen seq2seq model whose encoder reads ``[P; embed(input_ids)]`` with mask ``[1_n; attention_mask]``.

    ``forward`` and ``generate`` prepend the prompt and hand ``inputs_embeds`` to the base. Passing
    ``encoder_outputs`` to ``forward`` skips the prompt: such outputs (and their mask) must already include it.
    ``get_encoder()`` is the base's encoder, without the prompt.
    """

    config_class = SoftPromptConfig

    def __init__(self, config: SoftPromptConfig, base_model=None):
        super().__init__(config, base_model)
        embeddings = self.base.get_input_embeddings()
        # Drawn on the CPU (the same draw as peft's), then put where the embeddings are (device_map="cuda", ...).
        self.soft_prompt = SoftPrompt(config.num_virtual_tokens, embeddings.embedding_dim)
        self.soft_prompt.to(embeddings.weight.device)

    def prepend_prompt(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        """Embed ``input_ids`` (unless ``inputs_embeds`` is given) and put the prompt in front of them and the mask."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.base.get_input_embeddings()(input_ids)
        return self.soft_prompt(inputs_embeds, attention_mask)

    # The decoder and label arguments stay named: Trainer keeps only the dataset columns forward's signature names.
    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                labels=None, inputs_embeds=None, encoder_outputs=None, **kwargs):
        if encoder_outputs is None:
            inputs_embeds, attention_mask = self.prepend_prompt(input_ids, inputs_embeds, attention_mask)
            input_ids = None
        kwargs.update(decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask, labels=labels)
        return super().forward(input_ids, attention_mask, inputs_embeds=inputs_embeds, encoder_outputs=encoder_outputs,
                               **kwargs)

    def generate(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs):
        """The base's ``generate`` (greedy, beam, sampling) on ``[P; E]`` with the extended mask."""
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        if kwargs.get("encoder_outputs") is not None:
            raise ValueError("generate() of a prompt-tuned model takes input_ids, not encoder_outputs")
        inputs_embeds, attention_mask = self.prepend_prompt(input_ids, inputs_embeds, attention_mask)
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        return self.base.generate(inputs_embeds=inputs_embeds, **kwargs)


register_delta_model(SoftPromptConfig, SoftPromptModel)


def checked_options(options: PromptTuningOptions | None, tokenizer) -> PromptTuningOptions:
    """``options`` (defaults when ``None``) once they are known to build a prompt, before the base is touched."""
    options = options or PromptTuningOptions()
    check_prompt_options(options.num_virtual_tokens, options.prompt_init, options.prompt_init_text)
    if options.prompt_init == "text" and tokenizer is None:
        raise UsageError("--prompt_init text needs the tokenizer; pass tokenizer=... to the builder")
    return options


def build_soft_prompt_model(base_model, options: PromptTuningOptions | None = None, tokenizer=None) -> SoftPromptModel:
    """Freeze ``base_model`` and wrap it with a soft prompt initialised as ``options.prompt_init`` says."""
    options = checked_options(options, tokenizer)
    config = SoftPromptConfig(
        num_virtual_tokens=options.num_virtual_tokens,
        prompt_init=options.prompt_init,
        prompt_init_text=options.prompt_init_text,
        tokenizer_name_or_path=getattr(tokenizer, "name_or_path", None) or None,
        **delta_config_kwargs(base_model),
    )
    model = SoftPromptModel(config, base_model)
    word_embeddings = model.base.get_input_embeddings()
    token_ids = initial_prompt_token_ids(options, tokenizer, word_embeddings.num_embeddings)
    if token_ids is not None:
        init_prompt_from_token_ids(model.soft_prompt.prompt_embeddings, word_embeddings, token_ids)
    return model


# ------------------------------------------------------------------------------------------------ library (peft)
def peft_init_fields(prompt_init: str, prompt_init_text: str | None, tokenizer_name_or_path: str | None) -> dict:
    """peft's ``prompt_tuning_init*`` fields recording how a prompt was initialised.

    peft's ``TEXT`` needs a tokenizer it can load by name (and re-runs that init when an adapter is loaded with
    ``is_trainable=True``); a tokenizer built in memory has none, so such a prompt is recorded as ``RANDOM`` with its
    text kept. The trained values, not these fields, are what an adapter carries.
    """
    if prompt_init == "text" and not tokenizer_name_or_path:
        return {"prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": prompt_init_text}
    fields = {"prompt_tuning_init": PEFT_PROMPT_INITS[prompt_init]}
    if prompt_init == "text":
        fields.update(prompt_tuning_init_text=prompt_init_text, tokenizer_name_or_path=tokenizer_name_or_path)
    return fields


def build_peft_prompt_tuning(base_model, options: PromptTuningOptions | None = None, tokenizer=None):
    """``get_peft_model(base_model, PromptTuningConfig(SEQ_2_SEQ_LM, num_transformer_submodules=1, ...))``.

    ``random`` and ``vocab`` are peft's own ``RANDOM``/``SAMPLE_VOCAB``. peft's ``TEXT`` loads a tokenizer by name,
    but the builder is handed the tokenizer object: the prompt is built as ``RANDOM`` (the same random draw peft's
    ``TEXT`` path makes first) and then given the embeddings of the text's tokens, tiled or cut exactly as peft does
    (:func:`text_token_ids`); the config then records ``TEXT`` (see :func:`peft_init_fields`).
    """
    options = checked_options(options, tokenizer)
    from peft import PromptTuningConfig, TaskType, get_peft_model

    peft_init = "RANDOM" if options.prompt_init == "text" else PEFT_PROMPT_INITS[options.prompt_init]
    config = PromptTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=options.num_virtual_tokens,
        num_transformer_submodules=1,  # peft's seq2seq default 2 adds a decoder prompt prompt tuning never reads
        prompt_tuning_init=peft_init,
    )
    model = get_peft_model(base_model, config)
    average_loss_per_batch(model.get_base_model())  # Trainer reads it from the unwrapped base
    if options.prompt_init == "text":
        token_ids = torch.tensor(text_token_ids(tokenizer, options.prompt_init_text, options.num_virtual_tokens))
        init_prompt_from_token_ids(peft_prompt_embedding(model).weight, model.get_input_embeddings(), token_ids)
        for name, value in peft_init_fields("text", options.prompt_init_text, tokenizer.name_or_path).items():
            setattr(config, name, value)
    return model


# ------------------------------------------------------------------------------------------------ interop
def export_to_peft(model: SoftPromptModel, directory) -> None:
    """Write ``model``'s prompt as a peft prompt-tuning adapter (``adapter_config.json`` + safetensors).

    Load it with ``PeftModel.from_pretrained(base_model, directory)``: the same base gives the same outputs.
    """
    from peft import PromptTuningConfig, TaskType
    from safetensors.torch import save_file

    if not isinstance(model, SoftPromptModel):
        raise UsageError(f"export_to_peft takes a SoftPromptModel (scratch prompt tuning), not {type(model).__name__}")
    config, base_config = model.config, model.base.config
    peft_config = PromptTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=config.num_virtual_tokens,
        num_transformer_submodules=1,
        token_dim=model.soft_prompt.prompt_embeddings.shape[1],
        # What peft itself records (informational for prompt tuning): every family's config answers to these names
        # (T5 maps them to num_layers/num_heads, BART to encoder_layers/encoder_attention_heads).
        num_layers=base_config.num_hidden_layers,
        num_attention_heads=base_config.num_attention_heads,
        base_model_name_or_path=config.base_model_name_or_path,
        inference_mode=True,  # as PeftModel.save_pretrained writes it
        **peft_init_fields(config.prompt_init, config.prompt_init_text, config.tokenizer_name_or_path),
    )
    os.makedirs(directory, exist_ok=True)
    peft_config.save_pretrained(directory)
    prompt = model.soft_prompt.prompt_embeddings.detach().cpu().contiguous()
    save_file({PEFT_PROMPT_KEY: prompt}, os.path.join(directory, PEFT_WEIGHTS_NAME), {"format": "pt"})


def import_from_peft(directory, base_model=None, **base_model_kwargs) -> SoftPromptModel:
    """Read a peft prompt-tuning adapter (seq2seq) into a :class:`SoftPromptModel`.

    ``base_model`` is the frozen base to put the prompt on; by default the adapter's ``base_model_name_or_path`` is
    loaded (``base_model_kwargs`` go to its ``from_pretrained``). An adapter saved with peft's seq2seq default
    (``num_transformer_submodules=2``) stores ``2n`` rows: the first ``n`` are the encoder prompt, the only ones peft's
    prompt-tuning forward uses; the unused decoder rows are dropped.
    """
    from transformers.utils import cached_file

    source = str(directory)
    with open(cached_file(source, PEFT_CONFIG_NAME)) as file:
        peft_config = json.load(file)
    if peft_config.get("peft_type") != "PROMPT_TUNING":
        raise UsageError(
            f"{source} holds a peft {peft_config.get('peft_type')} adapter, not prompt tuning; import it with the "
            f"method it belongs to"
        )
    if peft_config.get("task_type") != "SEQ_2_SEQ_LM":
        raise UsageError(
            f"{source} is a prompt for task_type {peft_config.get('task_type')!r}; this project's models are "
            f"seq2seq (SEQ_2_SEQ_LM): train the prompt on a seq2seq base"
        )
    num_virtual_tokens = peft_config["num_virtual_tokens"]
    submodules = peft_config.get("num_transformer_submodules") or 2  # peft's seq2seq default
    try:
        prompt = load_tensors(cached_file(source, PEFT_WEIGHTS_NAME))[PEFT_PROMPT_KEY]
    except (OSError, KeyError) as error:
        raise UsageError(
            f"{source} has no readable {PEFT_WEIGHTS_NAME} with a {PEFT_PROMPT_KEY!r} tensor ({error}); save the "
            f"adapter with peft's save_pretrained(safe_serialization=True)"
        ) from None
    if prompt.shape[0] != num_virtual_tokens * submodules:
        raise UsageError(
            f"{source}: {PEFT_PROMPT_KEY} has {prompt.shape[0]} rows but the config says {num_virtual_tokens} tokens "
            f"x {submodules} submodules; the adapter files do not belong together"
        )
    init = {value: key for key, value in PEFT_PROMPT_INITS.items()}.get(peft_config.get("prompt_tuning_init"), "random")
    config = SoftPromptConfig(
        num_virtual_tokens=num_virtual_tokens,
        prompt_init=init,
        prompt_init_text=peft_config.get("prompt_tuning_init_text"),
        tokenizer_name_or_path=peft_config.get("tokenizer_name_or_path"),
        base_model_name_or_path=peft_config.get("base_model_name_or_path"),
    )
    base_model = attach_base(config, base_model, delta_source=source, **base_model_kwargs)
    if prompt.shape[1] != base_model.get_input_embeddings().embedding_dim:
        raise UsageError(
            f"{source}: the prompt has dimension {prompt.shape[1]} but the base model's embeddings have "
            f"{base_model.get_input_embeddings().embedding_dim}; load it onto the base it was trained on"
        )
    model = SoftPromptModel(config, base_model)
    model.load_delta_state_dict({"soft_prompt.prompt_embeddings": prompt[:num_virtual_tokens]}, source=source)
    model.eval()
    return model


METHOD = Method(
    name="prompt_tuning",
    options=PromptTuningOptions,
    recommended=Recommended(
        source="Lester et al. 2021, 'The Power of Scale for Parameter-Efficient Prompt Tuning' (arXiv:2104.08691): 20 "
        "prompt tokens, Adafactor at a constant learning rate of 0.3 (two orders of magnitude above full "
        "fine-tuning's); the paper's best small-scale initialisation is from vocabulary embeddings or class labels. "
        "peft's seq2seq prompt-tuning example (examples/conditional_generation/peft_prompt_tuning_seq2seq.ipynb) uses "
        "AdamW at lr 1.",
        settings={"learning_rate": 0.3, "optim": "adafactor", "lr_scheduler_type": "constant",
                  "num_virtual_tokens": 20},
    ),
    build_scratch=build_soft_prompt_model,
    scratch_format=SCRATCH_DELTA,
    build_library=build_peft_prompt_tuning,
    **PEFT_LIBRARY,
)
