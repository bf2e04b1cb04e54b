"""Which examples a batch holds: length-grouped training batches drawn from the seed and the epoch, and evaluation in
the dataset's own order.

:class:`SeededSampling` is a ``Trainer`` mixin (``GenerationAccuracyTrainer`` uses it):

- ``--group_by_length`` training batches come from :class:`EpochSeededLengthGroupedSampler`, so a run resumed in the
  middle of an epoch sees the batches the interrupted run would have seen;
- evaluation keeps the dataset's order (``load_data`` has already sorted it by length), also under
  ``--group_by_length``, which would otherwise shuffle it by length groups: the scored class ids must line up with it.

Trainer has no public hook for its samplers: the two private methods overridden here are listed in
:data:`hf_peft_suite.compat.INTERNALS`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import has_length


class SeededSampling(Trainer):
    """The training and evaluation samplers described in the module docstring."""

    def _get_train_sampler(self, *args, **kwargs):
        sampler = super()._get_train_sampler(*args, **kwargs)
        if isinstance(sampler, LengthGroupedSampler):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler = EpochSeededLengthGroupedSampler(sampler, seed, lambda: self.state.epoch)
        return sampler

    def _get_eval_sampler(self, eval_dataset):
        """The evaluation set in its own order (see the module docstring)."""
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None  # else: accelerate shards it


class EpochSeededLengthGroupedSampler(torch.utils.data.Sampler):
    """Trainer's ``--group_by_length`` order, drawn from ``(seed, epoch)`` instead of the global random generator.

    Trainer's ``LengthGroupedSampler`` draws each epoch's permutation from the global generator as the epoch starts;
    a run resumed in the middle of an epoch starts that epoch again with another generator state, so it would see
    other batches than the run it continues. Seeded by the epoch, the order is the same. The epoch is read from the
    trainer's state (``epoch_of()``: 1.33 while resuming a third into epoch 1) rather than from ``set_epoch``, which
    accelerate does not forward to the sampler under several processes.
    """

    def __init__(self, sampler: LengthGroupedSampler, seed: int, epoch_of: Callable[[], float]):
        self.sampler, self.seed, self.epoch_of = sampler, seed, epoch_of

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = math.floor((self.epoch_of() or 0.0) + 1e-6)
        self.sampler.generator = torch.Generator().manual_seed(self.seed + epoch)
        return iter(self.sampler)
