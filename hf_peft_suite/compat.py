"""Every difference between the supported transformers versions (4.57.x, which AdapterHub pins, and 5.x), in one place.

The rest of the package codes to the API both versions share (``processing_class=``, ``eval_strategy=``,
``use_cpu=``, ``text_target=``, generation settings on ``generation_config``) and calls these helpers where they
differ.
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache

# accelerate's settings as the launcher (accelerate launch, or the user's shell) left them when this package was
# imported; see restore_launcher_environment().
_LAUNCHER_ENVIRONMENT = {key: value for key, value in os.environ.items() if key.startswith(("ACCELERATE_", "FSDP_"))}


@lru_cache(maxsize=None)
def _training_argument_names() -> frozenset[str]:
    from transformers import Seq2SeqTrainingArguments

    return frozenset(field.name for field in dataclasses.fields(Seq2SeqTrainingArguments))


def apply_4_57_training_flags(args) -> None:
    """Make the 4.57 flags ``--group_by_length`` and ``--warmup_ratio`` work on 5.x, which spells them
    ``train_sampling_strategy="group_by_length"`` and a float ``warmup_steps`` below 1 (a ratio)."""
    if "train_sampling_strategy" not in _training_argument_names():
        return
    if args.group_by_length:
        args.train_sampling_strategy = "group_by_length"
    if args.warmup_ratio and not args.warmup_steps:
        args.warmup_steps = args.warmup_ratio


# Keyword arguments the Auto classes add when they hand loading over to a registered model class's from_pretrained,
# besides the underscore-prefixed private ones (4.57 and 5.x: ``_from_auto``; 5.x also ``_commit_hash``). A class
# that loads another model through the Auto classes must not pass them on, since the Auto class adds them again:
# transformers 5.25 put ``_from_auto`` among the Hub arguments it passes explicitly, so a second copy in ``**kwargs``
# raises ``TypeError: got multiple values for keyword argument '_from_auto'``.
AUTO_CLASS_BOOKKEEPING = ("adapter_kwargs", "trust_remote_code", "code_revision")


def without_auto_class_bookkeeping(kwargs: dict) -> dict:
    """``kwargs`` without what the Auto classes add for their own bookkeeping (see ``AUTO_CLASS_BOOKKEEPING``):
    every underscore-prefixed key (private to transformers, whatever a release adds) and the names listed."""
    return {key: value for key, value in kwargs.items()
            if not key.startswith("_") and key not in AUTO_CLASS_BOOKKEEPING}


def default_report_to(args) -> None:
    """Report to no tracker unless asked: transformers 4.57's default (``None``) reports to every one installed."""
    if args.report_to is None:
        args.report_to = "none"


def average_loss_per_batch(model) -> None:
    """Make ``Trainer`` average the loss per batch for ``model``, as T5's own forward does on 4.57.

    On 5.x, Trainer passes ``num_items_in_batch`` to any model whose forward takes ``**kwargs`` (T5 on 5.x, peft
    wrappers, AdapterHub's T5) and normalises the loss over the whole accumulated batch, so cells would be trained on
    differently scaled losses under gradient accumulation.
    """
    model.accepts_loss_kwargs = False


def hub_revision(training_args) -> str | None:
    """``--hub_revision`` (transformers 5.x only; ``None`` on 4.57, which pushes to the main branch)."""
    return getattr(training_args, "hub_revision", None)


def cpu_bf16_problem() -> str | None:
    """Why bfloat16 would not pay off on this machine's CPU (``None`` when it has bf16 instructions).

    Uses torch's own CPU feature checks (private helpers, absent from some builds: then the answer is unknown and
    bf16 is allowed). Without avx512_bf16 or AMX (x86) or the bf16 extension (Arm), bf16 matrix products are
    emulated: slower than float32, and less precise.
    """
    import platform

    import torch

    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        checks = [check for check in checks if check is not None]
        if not checks or any(check() for check in checks):
            return None
        return "this CPU has no bfloat16 instructions (avx512_bf16 or AMX), so bf16 would be emulated: slower than fp32"
    if machine in ("aarch64", "arm64"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as file:
                flags = file.read().split()
        except OSError:
            return None  # macOS and others: no cpuinfo to read; let torch decide
        return None if "bf16" in flags else "this Arm CPU has no bf16 extension, so bf16 would be emulated"
    return None


def cache_argument(model) -> str:
    """The name under which ``model``'s forward (and generation's model inputs) takes the key/value cache: ``cache``
    on transformers 5.x (where ``past_key_values`` is a deprecated alias), ``past_key_values`` on 4.57."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def restore_launcher_environment() -> None:
    """Put accelerate's environment variables back as the launcher set them, before training arguments are built.

    ``TrainingArguments`` writes ``ACCELERATE_MIXED_PRECISION`` (and the FSDP settings) into the process environment
    and, the next time, reads them back as defaults: after one ``--bf16`` run (or ``evaluate_run(..., bf16=True)``)
    every later run in the same process, and every process it starts, would silently compute in bf16.
    """
    for key in [key for key in os.environ if key.startswith(("ACCELERATE_", "FSDP_"))]:
        if key not in _LAUNCHER_ENVIRONMENT:
            del os.environ[key]
    os.environ.update(_LAUNCHER_ENVIRONMENT)
