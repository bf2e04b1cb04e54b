"""How a run's processes were launched, and what that makes of its batch and of its cell.

- :func:`check_launch` refuses launches that would not train as one run: processes a launcher started together that
  would each train alone, and several GPUs visible to one process (Trainer would wrap the model in
  ``nn.DataParallel``: each batch split over the GPUs, the global batch multiplied, the one-pass evaluation off);
- :func:`engine_of` names what runs the processes (one process, DDP, FSDP1 or FSDP2, DeepSpeed ZeRO-2 or ZeRO-3) from
  the training arguments and the environment ``accelerate launch`` sets, and :func:`check_engine` refuses, before
  anything is loaded or written, a cell or setting that would fail or save nothing under it;
- :func:`global_train_batch` is the batch of one optimizer step (per device x processes x accumulation steps),
  recorded in ``results.json`` and the comparison table; :func:`warn_if_batch_differs` says in one line when it is
  not the batch of the run's preset (the seed recipe's 32 when no preset is named).

The engine is read before Trainer exists (``accelerate launch`` passes it in ``ACCELERATE_USE_FSDP``, ``FSDP_*`` and
``ACCELERATE_DEEPSPEED_*`` variables, which accelerate's own plugins read; ``--fsdp`` / ``--deepspeed`` put it in the
training arguments): these names are listed in :data:`hf_peft_suite.compat.INTERNALS`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from .compat import check_internals, installed_version
from .errors import UsageError, warn

# FSDP2 through accelerate: accelerate 1.6 added it; 1.15.0 fixed tied input/output embeddings (T5's) on torch >= 2.13
# (its release notes: "Fix FSDP2 tied-embedding models on torch >= 2.13"). Older releases run FSDP1 only.
FSDP2_LOWEST_ACCELERATE = "1.15.0"
# torch.distributed.fsdp.StateDictType values, as FSDP_STATE_DICT_TYPE may spell them.
STATE_DICT_TYPES = {"1": "FULL_STATE_DICT", "2": "LOCAL_STATE_DICT", "3": "SHARDED_STATE_DICT"}


def launched_world_size() -> int:
    """How many processes a launcher (``torchrun``, ``accelerate launch``) started together."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_launch(training) -> None:
    """Refuse processes that a launcher started together but that would not train together, and a process that sees
    several GPUs (see the module docstring)."""
    launched = launched_world_size()
    if launched > 1 and training.world_size != launched:
        raise UsageError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but each trains alone (world size "
            f"{training.world_size}), so they would overwrite each other's results; on CPUs pass --use_cpu true "
            f"(accelerate: --multi_gpu with use_cpu, not FSDP or DeepSpeed), on GPUs give each process one GPU"
        )
    gpus = training.n_gpu
    if gpus > 1:
        raise UsageError(
            f"this process sees {gpus} GPUs, and Trainer would split every batch over them with nn.DataParallel (a "
            f"global batch {gpus} times --per_device_train_batch_size, evaluation in two passes); start one process "
            f"per GPU: accelerate launch --multi_gpu --num_processes {gpus} run_experiment.py ... (or torchrun "
            f"--nproc_per_node {gpus} run_experiment.py ...), or use one GPU: CUDA_VISIBLE_DEVICES=0 python "
            f"run_experiment.py ..."
        )


# ------------------------------------------------------------------------------------------------ the engine
@dataclass(frozen=True)
class Engine:
    """What runs a training: ``kind`` is ``single``, ``ddp``, ``fsdp`` or ``deepspeed``.

    ``fsdp_version`` and ``state_dict_type`` describe FSDP; ``zero_stage`` and
    ``gathers_16bit_weights`` (``stage3_gather_16bit_weights_on_model_save``) DeepSpeed.
    """

    kind: str
    fsdp_version: int | None = None
    state_dict_type: str | None = None
    zero_stage: int | None = None
    gathers_16bit_weights: bool | None = None

    @property
    def name(self) -> str:
        """``single``, ``ddp``, ``fsdp1``, ``fsdp2``, ``deepspeed-zero2``, ... (recorded in ``results.json``)."""
        if self.kind == "fsdp":
            return f"fsdp{self.fsdp_version}"
        if self.kind == "deepspeed":
            return f"deepspeed-zero{self.zero_stage}"
        return self.kind

    @property
    def shards_parameters(self) -> bool:
        """Whether each process holds only a piece of every parameter (FSDP, ZeRO-3)."""
        return self.kind == "fsdp" or (self.kind == "deepspeed" and self.zero_stage == 3)


def _true(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "y", "t")


def engine_of(training) -> Engine:
    """The engine the training arguments and the launcher's environment ask for (see the module docstring)."""
    fsdp = _fsdp_engine(training)
    if fsdp is not None:
        return fsdp
    deepspeed = _deepspeed_engine(training)
    if deepspeed is not None:
        return deepspeed
    return Engine("ddp" if training.world_size > 1 else "single")


def _fsdp_engine(training) -> Engine | None:
    plugin = getattr(training, "fsdp_plugin_args", None)  # transformers 5.x, from --fsdp / --fsdp_config
    if plugin:
        return Engine("fsdp", int(plugin.get("fsdp_version", 2)), _state_dict_type(plugin.get("state_dict_type")))
    if not (training.fsdp or _true(os.environ.get("ACCELERATE_USE_FSDP", "false"))):
        return None
    # accelerate launch (and --fsdp on transformers 4.57, which sets the same variables); accelerate's plugin reads
    # them with these defaults. accelerate < 1.6 sets no FSDP_VERSION: it runs FSDP1 whatever the config says.
    version = int(os.environ.get("FSDP_VERSION", "1"))
    default_type = "FULL_STATE_DICT" if version == 1 else "SHARDED_STATE_DICT"
    return Engine("fsdp", version, _state_dict_type(os.environ.get("FSDP_STATE_DICT_TYPE") or default_type))


def _state_dict_type(value) -> str:
    text = str(value or "FULL_STATE_DICT").split(".")[-1].upper()  # "StateDictType.FULL_STATE_DICT", "1", ...
    return STATE_DICT_TYPES.get(text, text)


def _deepspeed_engine(training) -> Engine | None:
    plugin = getattr(training, "deepspeed_plugin", None)  # built by TrainingArguments for --deepspeed or the launcher
    if not (training.deepspeed or plugin is not None or _true(os.environ.get("ACCELERATE_USE_DEEPSPEED", "false"))):
        return None
    config = getattr(plugin, "deepspeed_config", None) or {}
    zero = config.get("zero_optimization", {}) if isinstance(config, dict) else {}
    stage = zero.get("stage", os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2))
    gathers = zero.get("stage3_gather_16bit_weights_on_model_save",
                       os.environ.get("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "false"))
    return Engine("deepspeed", zero_stage=int(stage), gathers_16bit_weights=_true(gathers))


def check_engine(engine: Engine, training, cell: str, saves_from_given_state_dict: bool, delta: bool) -> None:
    """Refuse, with one line, what would fail or save nothing under ``engine`` (``cell``: ``--method M
    --implementation I``; ``delta``: the cell trains a part of the model beside a frozen base)."""
    if engine.kind != "single":  # read from the variables accelerate sets: are they still its names?
        check_internals("accelerate")
    if engine.kind not in ("fsdp", "deepspeed"):
        return
    flag = {"fsdp": "FSDP", "deepspeed": f"DeepSpeed ZeRO-{engine.zero_stage}"}[engine.kind]
    if engine.shards_parameters and not saves_from_given_state_dict:
        raise UsageError(
            f"{cell} cannot run under {flag}: AdapterHub's save_adapter reads the model's own parameters, which "
            f"{flag} holds in pieces on every process; use --implementation scratch (the same adapters, saved from "
            f"the gathered weights) or DDP / DeepSpeed ZeRO-2"
        )
    if engine.kind == "fsdp":
        _check_fsdp(engine, training, delta)
    elif engine.zero_stage == 3 and not engine.gathers_16bit_weights:
        raise UsageError(
            "DeepSpeed ZeRO-3 without zero3_save_16bit_model (stage3_gather_16bit_weights_on_model_save) writes "
            "DeepSpeed's own sharded checkpoint and no model/ weights; set zero3_save_16bit_model: true in the "
            "accelerate config"
        )
    import torch

    if not torch.cuda.is_available():
        raise UsageError(
            f"{flag} needs GPUs: on CPUs accelerate drops it and would run plain data parallelism instead; on CPUs "
            f"launch plain processes (torchrun --nproc_per_node N ... --use_cpu true)"
        )
    if engine.kind == "deepspeed":
        check_internals("deepspeed")


def _check_fsdp(engine: Engine, training, delta: bool) -> None:
    if engine.state_dict_type != "FULL_STATE_DICT":
        raise UsageError(
            f"FSDP with fsdp_state_dict_type {engine.state_dict_type} makes Trainer write FSDP's own checkpoint and "
            f"no model/ weights; set fsdp_state_dict_type: FULL_STATE_DICT in the accelerate config"
        )
    if engine.fsdp_version == 2 and not _accelerate_has_fsdp2():
        raise UsageError(
            f"FSDP2 (fsdp_version: 2) needs accelerate >= {FSDP2_LOWEST_ACCELERATE} here (accelerate "
            f"{installed_version('accelerate')} is installed; earlier releases mishandle T5's tied embeddings on "
            f"torch >= 2.13): pip install 'accelerate>={FSDP2_LOWEST_ACCELERATE}', or use FSDP1 (fsdp_version: 1) "
            f"for full fine-tuning"
        )
    if engine.fsdp_version == 1 and delta:
        raise UsageError(
            "PEFT cells do not run under FSDP1: its root unit (the shared embedding and final norms) holds only frozen "
            "weights, and after the first backward pass FSDP1 loses them (seen with torch 2.13); use FSDP2 "
            f"(fsdp_version: 2, accelerate >= {FSDP2_LOWEST_ACCELERATE}), DDP or DeepSpeed"
        )
    if training.resume_from_checkpoint:
        raise UsageError(
            "--resume_from_checkpoint under FSDP is not supported: Trainer resumes FSDP runs from FSDP's own "
            "checkpoint files, and hf_peft_suite's checkpoints hold the trainable weights in the cell's format; "
            "resume without FSDP (DDP), or start again"
        )
    if training.load_best_model_at_end:
        raise UsageError(
            "--load_best_model_at_end under FSDP is not supported: Trainer would reload the best checkpoint from "
            "FSDP's own checkpoint files after the whole run, and hf_peft_suite's checkpoints hold the trainable "
            "weights in the cell's format; leave it off (results.json records the best epoch and its accuracy)"
        )
    check_internals("torch")


def _accelerate_has_fsdp2() -> bool:
    from packaging.version import Version

    return Version(installed_version("accelerate") or "0") >= Version(FSDP2_LOWEST_ACCELERATE)


# ------------------------------------------------------------------------------------------------- the batch
def global_train_batch(training) -> int:
    """Examples per optimizer step: per device x devices per process x processes x accumulation steps."""
    return training.train_batch_size * training.world_size * training.gradient_accumulation_steps


def batch_in_words(training) -> str:
    """``256 (32 per device x 8 processes x 1 accumulation step)``."""
    processes, steps = training.world_size, training.gradient_accumulation_steps
    return (f"{global_train_batch(training)} ({training.per_device_train_batch_size} per device x {processes} "
            f"process{'es' if processes != 1 else ''} x {steps} accumulation step{'s' if steps != 1 else ''})")


def warn_if_batch_differs(training, recipe_batch: int, recipe: str) -> None:
    """One ``warning:`` line when the global batch is not ``recipe_batch`` (the batch ``recipe`` was tuned for),
    with the per-device batch that keeps it; said once per process."""
    if global_train_batch(training) == recipe_batch:
        return
    share, left = divmod(recipe_batch, training.world_size * training.gradient_accumulation_steps)
    keep = (f"for {recipe}'s batch pass --per_device_train_batch_size {share}" if share and not left else
            f"{recipe_batch} is not a multiple of {training.world_size * training.gradient_accumulation_steps}")
    _warn_once(f"the global batch is {batch_in_words(training)}, not the {recipe_batch} that {recipe}'s learning "
               f"rate and schedule were chosen for; {keep}")


@lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warn(message)
