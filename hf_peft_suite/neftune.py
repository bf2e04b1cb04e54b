"""NEFTune (``--neftune_noise_alpha``) for every cell, as a ``TrainerCallback``.

NEFTune (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning",
https://arxiv.org/abs/2310.05914) adds uniform noise to the input embeddings while training::

    E' = E + U(-m, m),   m = alpha / sqrt(L * d)

for a batch of ``L`` tokens of ``d`` dimensions, on the encoder's and the decoder's input embeddings (T5's shared
embedding); evaluation sees the embeddings unchanged. Trainer applies it itself, but finds the embeddings of a peft
model through ``base_model.model``, which peft's prompt-learning models (prompt tuning, prefix tuning) do not have, so
those cells stopped at the first step; and it hooks ``get_input_embeddings()`` alone, which T5 on transformers 5.x
no longer calls (its encoder and decoder have embedding modules of their own, sharing the weight), so there the noise
silently never came. The callback hooks every module holding the input embeddings' weight
(:func:`input_embedding_modules`), in every cell, with the noise Trainer draws.
``GenerationAccuracyTrainer`` takes the flag from Trainer and adds this callback instead.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback


class NoisyEmbeddings(TrainerCallback):
    """Add NEFTune's noise to the input embeddings' output while the model trains."""

    def __init__(self, noise_alpha: float):
        self.noise_alpha = noise_alpha
        self.handles: list = []

    def noise(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        magnitude = self.noise_alpha / math.sqrt(output.size(1) * output.size(2))
        return output + torch.zeros_like(output).uniform_(-magnitude, magnitude)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.handles and model is not None:
            self.handles = [module.register_forward_hook(self.noise) for module in input_embedding_modules(model)]

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self.handles:
            handle.remove()
        self.handles = []


def input_embedding_modules(model) -> list[torch.nn.Embedding]:
    """Every embedding module of ``model`` that holds its input embeddings' weight: the modules the encoder and the
    decoder actually call (on transformers 4.57 T5's ``shared`` itself; on 5.x their own ``embed_tokens``, sharing its
    weight). A peft model and a scratch delta answer ``get_input_embeddings()`` for their base."""
    weight = model.get_input_embeddings().weight
    return [module for module in model.modules() if isinstance(module, torch.nn.Embedding) and module.weight is weight]
