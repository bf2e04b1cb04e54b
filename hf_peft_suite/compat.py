"""The compatibility contract: the library versions hf_peft_suite is tested with, every difference between them, and
every library internal the package relies on, in one place.

**The tested window** (:data:`TESTED`). CI (``.ci/run``) tests two environments: *full*, with the lowest supported
version of every dependency pinned (``.ci/lowest.txt``: transformers 4.57.6, which AdapterHub pins, ...) and
AdapterHub installed, and *latest*, with the newest versions ``setup.cfg`` allows. ``setup.cfg`` caps the libraries
whose internals the package relies on (transformers, peft, AdapterHub) at the next minor after the newest tested one,
so a fresh install only gets versions CI has passed; ``.ci/newest`` probes the newest releases, caps ignored, and a
cap is raised by a commit of its own. ``tests/test_compat.py`` checks that ``setup.cfg``, ``.ci/lowest.txt`` and
:data:`TESTED` agree. A user who installs a version outside the window anyway gets one ``warning:`` line at the start
of a run, ``evaluate``, ``predict``, ``report`` and ``push`` (:func:`warn_outside_tested_versions`).

**Differences between the supported versions** (4.57.x and 5.x): the rest of the package codes to the API both share
(``processing_class=``, ``eval_strategy=``, ``use_cpu=``, ``text_target=``, generation settings on
``generation_config``) and calls the helpers below where they differ.

**Library internals** (:data:`INTERNALS`): each private or undocumented API the package uses (overridden private
``Trainer`` methods, peft's prompt and prefix internals, the cache classes, the Auto classes' private keyword
arguments, AdapterHub's parameter layout, torch's CPU feature checks), with the module that uses it, a check of the
installed library where one can be made without building a model, and the tests that exercise it. Before training
(and before ``evaluate`` / ``predict`` load a model) :func:`check_internals` runs the checks: transformers' for every
command, peft's and AdapterHub's before a library cell is built, accelerate's when processes were launched together,
torch's under FSDP and DeepSpeed's under DeepSpeed. A library that changed one stops the command with one ``error:``
line naming the API and the tested versions, instead of a traceback mid-run. Internals that live on model instances are reached through the accessors at the end of this module, which
fail the same way.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from .errors import UsageError, warn

# ------------------------------------------------------------------------------------------- the tested window
# Distribution -> (lowest tested version, first version not tested). setup.cfg declares ``>=lowest,<cap`` for each,
# .ci/lowest.txt pins ``==lowest`` in CI's full environment, and CI's latest environment gets the newest below the cap.
# Raise a cap only after .ci/newest has passed with the new release (a commit of its own that quotes its output).
TESTED = {
    "transformers": ("4.57.6", "5.26"),
    "peft": ("0.18.0", "0.22"),
    "adapters": ("1.3.0", "1.4"),  # AdapterHub (the `adapters` extra), which itself pins transformers ~=4.57.6
}


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (``None`` when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def tested_range(distribution: str) -> str:
    """The tested versions in words: ``4.57.6 to 5.25.x``."""
    lowest, cap = TESTED[distribution]
    major, minor = cap.split(".")[:2]
    return f"{lowest} to {major}.{int(minor) - 1}.x" if int(minor) > 0 else f"{lowest} to below {cap}"


def tested_requirement(distribution: str) -> str:
    """The pip requirement for a tested version: ``transformers>=4.57.6,<5.26``."""
    lowest, cap = TESTED[distribution]
    return f"{distribution}>={lowest},<{cap}"


def outside_tested_versions() -> list[str]:
    """``"transformers 5.26.0 (tested: 4.57.6 to 5.25.x)"`` for each installed library outside its tested window."""
    from packaging.version import Version

    outside = []
    for distribution, (lowest, cap) in TESTED.items():
        installed = installed_version(distribution)
        if installed is not None and not Version(lowest) <= Version(installed) < Version(cap):
            outside.append(f"{distribution} {installed} (tested: {tested_range(distribution)})")
    return outside


@lru_cache(maxsize=None)
def warn_outside_tested_versions() -> None:
    """One ``warning:`` line (once per process) when an installed library is outside the tested window."""
    outside = outside_tested_versions()
    if outside:
        names = [entry.split()[0] for entry in outside]
        warn(f"hf-peft-suite is not tested with {'; '.join(outside)}; results may differ or a step may fail. "
             f"For a tested set: pip install {' '.join(repr(tested_requirement(name)) for name in names)}")

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


# ---------------------------------------------------------------- sharding engines: parameter names, sizes, shapes
# Module wrappers that insert a segment into the name of every parameter below them: FSDP1's FullyShardedDataParallel
# (torch.distributed.fsdp._common_utils.FSDP_WRAPPED_MODULE), activation checkpointing's CheckpointWrapper
# (torch.distributed.algorithms._checkpoint.checkpoint_wrapper._CHECKPOINT_WRAPPED_MODULE) and torch.compile's
# OptimizedModule (_orig_mod). The state dicts FSDP gathers, and that Trainer hands to the save, carry the names without
# them. FSDP2 (fully_shard) and DeepSpeed rename nothing.
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


def clean_parameter_name(name: str) -> str:
    """``name`` as the unwrapped model has it: ``base.encoder.block.0._fsdp_wrapped_module.layer.0.SelfAttention.q.
    lora_A.weight`` -> ``base.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight``."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_SEGMENTS)


def is_partitioned(parameter) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions ``parameter``: ``deepspeed.zero.Init`` (which ``from_pretrained`` enters when
    ZeRO-3 is configured) empties its data and keeps its full size in ``ds_numel`` and its shape in ``ds_shape``."""
    return hasattr(parameter, "ds_numel")


def full_numel(parameter) -> int:
    """The number of elements of ``parameter`` in the whole model, also when ZeRO-3 has partitioned it (``ds_numel``;
    its own ``numel()`` is then 0). FSDP2's DTensor parameters report their full size themselves."""
    return int(parameter.ds_numel) if is_partitioned(parameter) else parameter.numel()


def full_shape(parameter) -> tuple[int, ...]:
    """The shape of ``parameter`` in the whole model, also when ZeRO-3 has partitioned it (``ds_shape``)."""
    return tuple(parameter.ds_shape if is_partitioned(parameter) else parameter.shape)


# ------------------------------------------------------------------------------------------- library internals
@dataclass(frozen=True)
class Internal:
    """One library internal the package relies on.

    Attributes:
        library: the distribution that owns it (``transformers``, ``peft``, ``adapters``, ``torch``).
        api: what is relied on, as one would look it up in the library.
        used_by: the module of this package that uses it, and what for.
        check: a check of the installed library that needs no model (``None`` when the installed version has it
            as used, else what differs); ``None`` where only running it can tell (see ``tests``).
        tests: the tests (``file::function``) that exercise it; ``tests/test_compat.py`` checks that they exist.
        needed_for: ``"training"`` (runs and ``evaluate``, through Trainer) or ``"loading"`` (every command that
            loads a model, ``predict`` included).
    """

    library: str
    api: str
    used_by: str
    check: Callable[[], str | None] | None
    tests: tuple[str, ...]
    needed_for: str = "training"


def _resolve(dotted: str):
    """The object at ``module.path:Attribute.chain`` (``None`` when something on the way is missing)."""
    module_name, _, attributes = dotted.partition(":")
    try:
        value = importlib.import_module(module_name)
    except ImportError:
        return None
    for attribute in attributes.split(".") if attributes else ():
        value = getattr(value, attribute, None)
        if value is None:
            return None
    return value


def _has(dotted: str, *parameters: str) -> Callable[[], str | None]:
    """A check that ``dotted`` exists and (for a callable) takes ``parameters``, by name."""

    def check() -> str | None:
        value = _resolve(dotted)
        if value is None:
            return f"{dotted.replace(':', '.')} is missing"
        if parameters:
            try:
                names = set(inspect.signature(value).parameters)
            except (TypeError, ValueError):
                return None
            missing = [name for name in parameters if name not in names]
            if missing:
                return f"{dotted.replace(':', '.')} no longer takes {', '.join(missing)}"
        return None

    return check


def _source_mentions(dotted: str, *texts: str) -> Callable[[], str | None]:
    """A check that the source of ``dotted`` still contains each of ``texts`` (for instance attributes that a
    library sets inside a method, which no signature shows)."""

    def check() -> str | None:
        value = _resolve(dotted)
        if value is None:
            return f"{dotted.replace(':', '.')} is missing"
        source = _source(value)
        if source is None:
            return None  # no source to read (a compiled build): only running it can tell
        missing = [text for text in texts if text not in source]
        return f"{dotted.replace(':', '.')} no longer uses {', '.join(missing)}" if missing else None

    return check


@lru_cache(maxsize=None)
def _source(value) -> str | None:
    """The source of a class or function, read once per process: every command checks the internals before it starts,
    and reading ``Trainer``'s source takes about 0.2 s. (A replaced object is another key, so it is read again.)"""
    try:
        return inspect.getsource(value)
    except (OSError, TypeError):
        return None


def _all_of(*checks: Callable[[], str | None]) -> Callable[[], str | None]:
    def check() -> str | None:
        return next((problem for problem in (check() for check in checks) if problem), None)

    return check


def _cache_classes() -> str | None:
    """The cache API the one-pass evaluation and prefix tuning use: build an encoder-decoder cache from per-layer
    key/value pairs, read its halves, its length and a layer's keys back."""
    import torch

    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    keys = torch.zeros(1, 1, 2, 1)
    try:
        cache = EncoderDecoderCache(DynamicCache([(keys, keys)]), DynamicCache([(keys, keys)]))
        length = cache.self_attention_cache.get_seq_length()
        layer_keys = cache_layer_keys(cache.cross_attention_cache, 0)
    except (TypeError, AttributeError, IndexError, ValueError) as error:
        return f"transformers.cache_utils.EncoderDecoderCache / DynamicCache changed ({type(error).__name__}: {error})"
    if length != 2 or layer_keys is None or tuple(layer_keys.shape) != (1, 1, 2, 1):
        return "transformers.cache_utils.DynamicCache no longer keeps per-layer keys as it was given them"
    return None


def _cache_argument_present() -> str | None:
    from transformers import T5ForConditionalGeneration

    names = inspect.signature(T5ForConditionalGeneration.forward).parameters
    return None if {"cache", "past_key_values"} & set(names) else "T5's forward takes neither cache nor past_key_values"


def _wrapper_segments() -> str | None:
    """torch's wrappers still name their wrapped module as :data:`WRAPPER_SEGMENTS` says."""
    expected = {"torch.distributed.fsdp._common_utils:FSDP_WRAPPED_MODULE": WRAPPER_SEGMENTS[0],
                "torch.distributed.algorithms._checkpoint.checkpoint_wrapper:_CHECKPOINT_WRAPPED_MODULE":
                    WRAPPER_SEGMENTS[1]}
    for dotted, name in expected.items():
        if _resolve(dotted) != name:
            return f"{dotted.replace(':', '.')} is no longer {name!r}"
    return _source_mentions("torch._dynamo.eval_frame:OptimizedModule.__init__", WRAPPER_SEGMENTS[2])()


def _engine_settings_reachable() -> str | None:
    """The training arguments still carry the engine: transformers 5.x in ``fsdp_plugin_args``, 4.57 in accelerate's
    environment variables; both in ``deepspeed_plugin``."""
    source = "transformers.training_args:TrainingArguments"
    fsdp = _source_mentions(source, "self.fsdp_plugin_args")() and _source_mentions(source, '"ACCELERATE_USE_FSDP"')()
    return fsdp or _source_mentions(source, "self.deepspeed_plugin")()


TRAINER = "transformers.trainer:Trainer"
SEQ2SEQ_TRAINER = "transformers.trainer_seq2seq:Seq2SeqTrainer"
INTERNALS: tuple[Internal, ...] = (
    # ---- transformers: Trainer's private methods that GenerationAccuracyTrainer overrides or calls (trainer.py and
    # its mixins, checkpoints.py and sampling.py)
    Internal("transformers", "Trainer._get_train_sampler(train_dataset)",
             "sampling.py: --group_by_length batches drawn from (seed, epoch), so a resumed run sees the same batches",
             _has(f"{TRAINER}._get_train_sampler"), ("test_resume.py::test_length_grouped_order_depends_on_the_seed_and_the_epoch_only", "test_resume.py::test_a_stopped_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_run")),
    Internal("transformers", "Trainer._get_eval_sampler(eval_dataset)",
             "sampling.py: evaluation in the dataset's own order, also under --group_by_length",
             _has(f"{TRAINER}._get_eval_sampler", "eval_dataset"),
             ("test_distributed.py::test_two_processes_score_every_example_once_as_one_process_does",)),
    Internal("transformers", "Trainer._save(output_dir, state_dict)",
             "checkpoints.py: checkpoints and model/ hold only the trainable weights, in the cell's artifact format",
             _has(f"{TRAINER}._save", "output_dir", "state_dict"),
             ("test_resume.py::test_a_stopped_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_run", "test_methods_train.py::test_peft_artifacts_are_a_small_fraction_of_the_full_model")),
    Internal("transformers", "Trainer._load_from_checkpoint(resume_from_checkpoint, model)",
             "checkpoints.py: resuming loads the cell's own format and refuses a foreign checkpoint with one line",
             _has(f"{TRAINER}._load_from_checkpoint", "resume_from_checkpoint", "model"),
             ("test_resume.py::test_a_stopped_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_run", "test_bad_input.py::test_resume_from_a_corrupted_or_truncated_adapter_file")),
    Internal("transformers", "Trainer._load_best_model() (reads state.best_model_checkpoint)",
             "checkpoints.py: --load_best_model_at_end loads the best checkpoint through the cell's own format "
             "(Trainer's loader does not know AdapterHub's adapter file)",
             _all_of(_has(f"{TRAINER}._load_best_model"),
                     _source_mentions(f"{TRAINER}._load_best_model", "self.state.best_model_checkpoint")),
             ("test_trainer_flags.py::test_the_saved_model_is_the_best_checkpoint_in_every_format",)),
    Internal("transformers", "Trainer._load_optimizer_and_scheduler(checkpoint)",
             "checkpoints.py: damaged optimizer or scheduler state is one error line",
             _has(f"{TRAINER}._load_optimizer_and_scheduler", "checkpoint"),
             ("test_bad_input.py::test_resume_never_runs_a_pickle_payload_in_a_checkpoint",)),
    Internal("transformers", "Trainer._load_rng_state(checkpoint)",
             "checkpoints.py: damaged random-number-generator state is one error line",
             _has(f"{TRAINER}._load_rng_state", "checkpoint"),
             ("test_bad_input.py::test_resume_never_runs_a_pickle_payload_in_a_checkpoint",)),
    Internal("transformers", "Trainer.get_batch_samples(epoch_iterator, num_batches, device) (undocumented)",
             "checkpoints.py: a run resumed at --max_steps trains no step past it",
             _has(f"{TRAINER}.get_batch_samples", "epoch_iterator", "num_batches", "device"),
             ("test_hardening.py::test_a_run_resumed_from_its_last_checkpoint_ends_exactly_where_the_uninterrupted_run_ends",)),
    Internal("transformers", "Trainer._prepare_inputs(inputs)",
             "trainer.py: the one-pass prediction step moves its batch as Trainer's own does",
             _has(f"{TRAINER}._prepare_inputs", "inputs"),
             ("test_evaluation.py::test_one_encoder_pass_gives_the_two_pass_predictions_and_loss",)),
    Internal("transformers", "Seq2SeqTrainer._gen_kwargs, Trainer.label_smoother / is_fsdp_enabled / "
             "is_deepspeed_enabled (instance attributes), and the label smoother called as "
             "label_smoother(model_output, labels)",
             "trainer.py: the one-pass prediction step reads evaluate()'s generation settings and falls back to two "
             "passes under FSDP and DeepSpeed; compute_loss smooths the loss with Trainer's smoother and "
             "eval_loss stays the plain cross-entropy",
             _all_of(_source_mentions(f"{SEQ2SEQ_TRAINER}.evaluate", "self._gen_kwargs"),
                     _source_mentions(TRAINER, "self.label_smoother", "self.is_fsdp_enabled",
                                      "self.is_deepspeed_enabled"),
                     _has("transformers.trainer_pt_utils:LabelSmoother.__call__", "model_output", "labels")),
             ("test_evaluation.py::test_one_encoder_pass_gives_the_two_pass_predictions_and_loss", "test_evaluation.py::test_with_full_batches_eval_loss_equals_the_two_pass_trainers_own",
              "test_trainer_flags.py::test_label_smoothing_smooths_the_training_loss_and_leaves_eval_loss_plain",
              "test_trainer_flags.py::test_label_smoothing_and_gradient_checkpointing_in_every_cell")),
    Internal("transformers", "Trainer.neftune_noise_alpha (the instance attribute train() reads to add NEFTune's "
             "noise)",
             "trainer.py: takes --neftune_noise_alpha from Trainer and adds the noise with neftune.NoisyEmbeddings, "
             "which finds every cell's embeddings",
             _source_mentions(TRAINER, "self.neftune_noise_alpha"),
             ("test_trainer_flags.py::test_flags_that_change_the_training_curve",)),
    Internal("transformers", "Trainer.get_optimizer_cls_and_kwargs(args, model) (a static method), "
             "transformers.integrations.get_reporting_integration_callbacks(report_to) and the callbacks' "
             "refusal to be built without their package, transformers.utils.is_liger_kernel_available",
             "training_flags.py: a flag whose optional package is missing is refused before anything is written",
             _all_of(_has(f"{TRAINER}.get_optimizer_cls_and_kwargs", "args", "model"),
                     _has("transformers.integrations:get_reporting_integration_callbacks", "report_to"),
                     _has("transformers.utils:is_liger_kernel_available")),
             ("test_trainer_flags.py::test_every_report_to_integration_without_its_package_is_one_error_line",
              "test_trainer_flags.py::test_every_optimizer_trainer_cannot_build_here_is_one_error_line")),
    Internal("transformers", "transformers.trainer_pt_utils.LengthGroupedSampler(..., generator=) and its "
             "generator attribute",
             "sampling.py: the epoch-seeded --group_by_length order",
             _has("transformers.trainer_pt_utils:LengthGroupedSampler", "generator"),
             ("test_resume.py::test_length_grouped_order_depends_on_the_seed_and_the_epoch_only",)),
    Internal("transformers", "transformers.trainer.TRAINING_ARGS_NAME, TRAINER_STATE_NAME",
             "checkpoints.py, run_folder.py: the files of a checkpoint",
             _all_of(_has("transformers.trainer:TRAINING_ARGS_NAME"), _has("transformers.trainer:TRAINER_STATE_NAME")),
             ("test_resume.py::test_a_stopped_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_run",)),
    # ---- transformers: models, loading, generation
    Internal("transformers", "the Auto classes' bookkeeping keyword arguments (_from_auto, trust_remote_code, "
             "adapter_kwargs, ...) passed to a registered class's from_pretrained",
             "methods/delta.py: loading a scratch artifact passes none of them on to the base's loader "
             "(without_auto_class_bookkeeping)",
             None, ("test_compat.py::test_every_scratch_artifact_loads_through_the_auto_class_with_hub_arguments",),
             needed_for="loading"),
    Internal("transformers", "PreTrainedModel.gradient_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)",
             "methods/delta.py: a scratch model checkpoints its base's activations (5.25 added every_n_layers, ...)",
             _has("transformers:PreTrainedModel.gradient_checkpointing_enable", "gradient_checkpointing_kwargs"),
             ("test_compat.py::test_scratch_gradient_checkpointing_takes_what_trainer_passes",)),
    Internal("transformers", "transformers.cache_utils.EncoderDecoderCache, DynamicCache (per-layer keys and values)",
             "one_pass.py: the loss pass reuses generate's cross-attention cache; methods/prefix_tuning.py: the "
             "prefix is the decoder's self-attention cache",
             _cache_classes, ("test_evaluation.py::test_one_encoder_pass_gives_the_two_pass_predictions_and_loss",
                              "test_prefix_tuning.py::test_same_seed_same_prefix_and_equal_logits_loss_gradients_and_generations"), needed_for="loading"),
    Internal("transformers", "the forward's cache argument (cache on 5.x, past_key_values on 4.57)",
             "one_pass.py, methods/prefix_tuning.py (cache_argument)",
             _cache_argument_present, ("test_prefix_tuning.py::test_same_seed_same_prefix_and_equal_logits_loss_gradients_and_generations",), needed_for="loading"),
    Internal("transformers", "generate() calling the model's prepare_inputs_for_generation (an instance attribute "
             "replaces it) with decoder_input_ids and, on 4.57, cache_position",
             "methods/prefix_tuning.py: the scratch prefix (and the fix of peft's) enters generation's first step",
             None, ("test_prefix_tuning.py::test_peft_own_generate_disagrees_with_its_forward_which_the_fix_repairs",),
             needed_for="loading"),
    Internal("transformers", "Seq2SeqTrainingArguments fields that differ: train_sampling_strategy (5.x) for "
             "group_by_length, warmup_steps < 1 for warmup_ratio, hub_revision (5.x)",
             "compat.py (apply_4_57_training_flags, hub_revision)",
             None, ("test_compat.py::test_the_4_57_spellings_of_group_by_length_and_warmup_ratio_take_effect",)),
    Internal("transformers", "TrainingArguments writes ACCELERATE_MIXED_PRECISION (and FSDP settings) into the "
             "environment and reads them back",
             "compat.py (restore_launcher_environment): a --bf16 run does not make later runs bf16",
             None, ("test_evaluation.py::test_a_bf16_run_leaves_the_next_run_in_the_same_process_in_float32",)),
    Internal("transformers", "transformers.hf_argparser.string_to_bool",
             "arguments.py, cli.py: --verbose read as the parser reads booleans",
             _has("transformers.hf_argparser:string_to_bool"), ("test_console.py::test_the_early_verbose_lookup_reads_the_flag_as_the_parser_does",)),
    # ---- peft
    Internal("peft", "PeftModelForSeq2SeqLM.base_model_prepare_inputs_for_generation, get_prompt(batch_size), "
             "active_peft_config, and generate() installing prepare_inputs_for_generation on the base",
             "methods/prefix_tuning.py: fix_peft_prefix_generation makes peft's prefix generate as its forward does",
             _all_of(_source_mentions("peft:PeftModelForSeq2SeqLM.__init__", "base_model_prepare_inputs_for_generation"),
                     _has("peft:PeftModel.get_prompt", "batch_size"), _has("peft:PeftModel.active_peft_config")),
             ("test_prefix_tuning.py::test_peft_own_generate_disagrees_with_its_forward_which_the_fix_repairs",)),
    Internal("peft", "PeftModel.prompt_encoder[adapter].embedding (prompt tuning's prompt)",
             "methods/prompt_tuning.py: --prompt_init text in the library cell (peft_prompt_embedding)",
             _source_mentions("peft:PeftModel._setup_prompt_encoder", "self.prompt_encoder"),
             ("test_prompt_tuning.py::test_text_init_matches_peft_loading_the_tokenizer_by_name",)),
    Internal("peft", "peft's seq2seq prefix layout (num_transformer_submodules=2: 4 L rows, which reach which layer)",
             "methods/prefix_tuning.py: peft_layer_rows, so the scratch prefix is peft's",
             None, ("test_prefix_tuning.py::test_peft_seq2seq_layout_feeds_half_the_rows_and_both_implementations_follow_it",)),
    Internal("peft", "peft.get_peft_model_state_dict(model, save_embedding_layers=...)",
             "methods/formats.py: a peft checkpoint is checked against the model before it is loaded",
             _has("peft:get_peft_model_state_dict", "save_embedding_layers"),
             ("test_resume.py::test_a_stopped_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_run",)),
    Internal("peft", "peft's adapter file layout (adapter_config.json fields, tensor names such as "
             "base_model.model.<module>.lora_A.weight, lora_magnitude_vector, ia3_l, prompt_embeddings)",
             "methods/peft_files.py and each method's export_to_peft / import_from_peft",
             None, ("test_lora.py::test_export_to_peft_loads_with_peft_from_pretrained",
                    "test_ia3.py::test_export_to_peft_loads_with_peft_and_imports_back",
                    "test_prompt_tuning.py::test_import_from_peft_restores_a_library_trained_prompt")),
    Internal("peft", "peft.utils.constants TRANSFORMERS_MODELS_TO_{LORA,IA3}_TARGET_MODULES_MAPPING and "
             "TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING",
             "methods/architectures.py mirrors them, so default targets are peft's",
             None, ("test_families.py::test_default_targets_are_peft_defaults_on_every_family",)),
    Internal("peft", "IA3Model._check_target_module_feedforward (feed-forward modules must be among the targets: "
             "fullmatch for an expression, suffix match for names)",
             "methods/ia3.py mirrors the rule, so both implementations accept and refuse the same options",
             _has("peft.tuners.ia3.model:IA3Model._check_target_module_feedforward"),
             ("test_ia3.py::test_scratch_and_peft_give_the_same_logits_loss_gradients_and_generations",
              "test_bad_input.py::test_bad_arguments")),
    # ---- AdapterHub
    Internal("adapters", "AdapterHub's parameter layout in T5 and BART (<sublayer>.adapters.<name>.adapter_down.0, "
             "adapter_up; attention_adapters / output_adapters) and its bottleneck equations",
             "methods/adapter.py: the scratch adapters equal AdapterHub's and convert to and from its files",
             None, ("test_adapter.py::test_scratch_equals_adapterhub_in_logits_loss_gradients_and_generations",
                    "test_adapter.py::test_adapterhub_adapter_imports_into_scratch")),
    Internal("adapters", "model.adapters_config.get(name).to_dict()",
             "methods/adapter.py: an AdapterHub checkpoint is checked against the model's adapter",
             _has("adapters:ModelAdaptersConfig.get"), ("test_resume.py::test_a_stopped_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_run",)),
    # ---- the standard library
    Internal("python", "argparse.ArgumentParser._actions",
             "arguments.py: parse_flags reads only the flags a command line gives, and --help lists them",
             _source_mentions("argparse:_ActionsContainer.__init__", "self._actions"),
             ("test_experiment.py::test_flags_override_json_config_which_overrides_preset",)),
    # ---- torch
    Internal("torch", "torch.cpu._is_avx512_bf16_supported, torch.cpu._is_amx_tile_supported",
             "compat.py (cpu_bf16_problem): --bf16 on a CPU without bf16 instructions is refused; when they are "
             "missing the answer is unknown and bf16 is allowed",
             None, ("test_evaluation.py::test_bf16_on_a_cpu_without_bf16_instructions_is_refused",)),
    Internal("torch", "the name segments module wrappers insert into parameter names: _fsdp_wrapped_module (FSDP1), "
             "_checkpoint_wrapped_module (activation checkpointing), _orig_mod (torch.compile); FSDP2 inserts none",
             "compat.py (clean_parameter_name) for methods/delta.py: a scratch delta is found by name under FSDP1",
             _wrapper_segments, ("test_engines.py::test_a_scratch_delta_under_fsdp_is_saved_by_name_and_loads_back",)),
    # ---- transformers and accelerate: the engine, before Trainer exists
    Internal("transformers", "Trainer.save_model under FSDP (a FULL_STATE_DICT gathered by accelerator.get_state_dict "
             "and handed to _save; nothing for other state dict types) and DeepSpeed (16-bit weights gathered on "
             "save); Trainer._load_best_model reads FSDP's own checkpoint files (load_fsdp_model) under FSDP; "
             "Trainer._wrap_model wraps in nn.DataParallel when args.n_gpu > 1",
             "launch.py (check_engine, check_launch): what would save no weights, fail after the run or split batches "
             "is refused",
             _all_of(_source_mentions(f"{TRAINER}.save_model", "FULL_STATE_DICT", "get_state_dict"),
                     _source_mentions(f"{TRAINER}._load_best_model", "load_fsdp_model"),
                     _source_mentions(f"{TRAINER}._wrap_model", "n_gpu > 1")),
             ("test_engines.py::test_what_would_save_no_weights_or_fail_under_fsdp_or_zero3_is_refused",
              "test_engines.py::test_several_gpus_in_one_process_are_refused_before_anything_is_written")),
    Internal("transformers", "TrainingArguments.fsdp_plugin_args (5.x) or the ACCELERATE_USE_FSDP / FSDP_* variables "
             "it sets (4.57), and TrainingArguments.deepspeed_plugin.deepspeed_config",
             "launch.py (engine_of): the engine --fsdp / --deepspeed ask for", _engine_settings_reachable,
             ("test_engines.py::test_the_engine_is_read_from_the_launcher_environment",)),
    Internal("accelerate", "the variables accelerate launch sets for the engine (ACCELERATE_USE_FSDP, FSDP_VERSION from "
             "1.6, FSDP_STATE_DICT_TYPE, ACCELERATE_USE_DEEPSPEED, "
             "ACCELERATE_DEEPSPEED_ZERO_STAGE, ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL) and their defaults",
             "launch.py (engine_of): the engine an accelerate config asks for",
             _all_of(_source_mentions("accelerate.utils.launch:prepare_multi_gpu_env", '"ACCELERATE_USE_FSDP"',
                                      '"FSDP_STATE_DICT_TYPE"'),
                     _source_mentions("accelerate.utils.launch:prepare_deepspeed_cmd_env",
                                      '"ACCELERATE_USE_DEEPSPEED"', '"ACCELERATE_DEEPSPEED_ZERO_STAGE"',
                                      '"ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"')),
             ("test_engines.py::test_the_engine_is_read_from_the_launcher_environment",
              "test_engines.py::test_processes_launched_together_stop_when_accelerate_renamed_its_engine_variables")),
    # ---- DeepSpeed (not a dependency: needed only where a run uses it; simulated in the tests)
    Internal("deepspeed", "ZeRO-3 partitioned parameters: deepspeed.zero.Init leaves empty data and sets ds_numel, "
             "ds_shape (Init._convert_to_deepspeed_param)",
             "compat.py (full_numel, full_shape) for modeling.py (count_parameters) and methods/delta.py "
             "(delta_shapes, checkpoint checks)",
             _source_mentions("deepspeed.runtime.zero.partition_parameters:Init._convert_to_deepspeed_param",
                              "ds_numel", "ds_shape"),
             ("test_engines.py::test_parameters_partitioned_by_zero3_are_counted_whole",
              "test_engines.py::test_a_checkpoint_is_checked_against_full_shapes_under_zero3")),
    Internal("deepspeed", "deepspeed.zero.GatheredParameters(params, modifier_rank=None) and "
             "deepspeed.zero.register_external_parameter(module, parameter)",
             "methods/sharding.py: the prompt's vocabulary init and DoRA's magnitude read gathered weights; DoRA's "
             "forward keeps W0 gathered",
             _all_of(_has("deepspeed.zero:GatheredParameters", "params", "modifier_rank"),
                     _has("deepspeed.zero:register_external_parameter", "module", "parameter")),
             ("test_engines.py::test_a_zero3_partitioned_base_gives_the_prompt_and_magnitude_of_the_whole_base",)),
)


def internal_problems(library: str, needed_for: tuple[str, ...] = ("training", "loading")) -> list[str]:
    """What the installed ``library`` changed among the internals the package relies on (for those purposes)."""
    return [f"{problem} (used by {internal.used_by.split(':')[0]})"
            for internal in INTERNALS
            if internal.library == library and internal.needed_for in needed_for and internal.check is not None
            for problem in [internal.check()] if problem]


def check_internals(library: str = "transformers", needed_for: tuple[str, ...] = ("training", "loading")) -> None:
    """Raise a :class:`UsageError` (one line: the API, the installed and the tested versions) when the installed
    ``library`` lacks an internal the package relies on; run before anything is trained or written."""
    problems = internal_problems(library, needed_for)
    if problems:
        raise UsageError(incompatible(library, problems[0]))


def incompatible(library: str, problem: str) -> str:
    """The one-line message for an internal that ``library`` changed."""
    installed = installed_version(library) or "(unknown version)"
    window = f"tested: {tested_range(library)}; pip install '{tested_requirement(library)}'" if library in TESTED \
        else "install the version the package was tested with"
    return f"{library} {installed} is not compatible with hf-peft-suite: {problem} ({window})"


def start_command(needed_for: tuple[str, ...] = ("training", "loading")) -> None:
    """What every command does first: warn once about versions outside the tested window, then check transformers'
    internals for ``needed_for`` (nothing for ``report`` and ``push``, which load no model)."""
    warn_outside_tested_versions()
    if needed_for:
        check_internals("transformers", needed_for)


# ------------------------------------------------------------------------ accessors for instance-level internals
def peft_prompt_embedding(model):
    """The trainable prompt of a peft prompt-tuning model (``prompt_encoder[adapter].embedding``), an ``nn.Embedding``."""
    try:
        return model.prompt_encoder[model.active_adapter].embedding
    except (AttributeError, KeyError, TypeError) as error:
        raise UsageError(incompatible("peft", f"PeftModel.prompt_encoder[adapter].embedding is gone ({error})")) from None


def peft_prefix_generation_hooks(model):
    """``(base_model_prepare_inputs_for_generation, get_prompt, num_virtual_tokens)`` of a peft prefix-tuning model."""
    try:
        return (model.base_model_prepare_inputs_for_generation, model.get_prompt,
                model.active_peft_config.num_virtual_tokens)
    except AttributeError as error:
        raise UsageError(incompatible("peft", f"PeftModelForSeq2SeqLM's generation hooks changed ({error})")) from None


def cache_layer_keys(cache, layer: int):
    """The keys of ``layer`` in a ``DynamicCache``: ``cache.layers[i].keys`` on 5.x, ``cache.key_cache[i]`` on 4.57."""
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys
    return cache.key_cache[layer]
