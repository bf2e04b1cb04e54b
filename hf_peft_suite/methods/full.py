"""Full fine-tuning: every weight of the base model is trained.

The reference recipe this project replaces (t5-small on IMDB, AdamW at lr 1e-5 for 10 epochs, batch 32, 90.0% best
test accuracy) is full fine-tuning. No PEFT library implements it, so it has only the ``scratch`` implementation,
which is the base model itself with every parameter trainable; ``--implementation library`` is a usage error.
Trainable parameters: all of them (60,506,624 for t5-small).
"""

from __future__ import annotations

from .base import Method, Recommended
from .formats import WHOLE_MODEL


def build_full_fine_tuning(base_model, options=None, tokenizer=None):
    """Return ``base_model`` with every parameter trainable."""
    base_model.requires_grad_(True)
    return base_model


METHOD = Method(
    name="full",
    options=None,
    recommended=Recommended(
        source="The reference notebook: AdamW at a constant learning rate of 1e-5 for 10 epochs, batch 32 (90.0% best "
        "test accuracy on IMDB with t5-small).",
        settings={"learning_rate": 1e-5, "lr_scheduler_type": "constant"},
    ),
    build_scratch=build_full_fine_tuning,
    scratch_format=WHOLE_MODEL,
)
