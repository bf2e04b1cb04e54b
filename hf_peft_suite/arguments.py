"""Command-line and JSON arguments: the project's dataclasses plus every ``Seq2SeqTrainingArguments`` flag.

One run is described by flags, a JSON file, a preset, or keyword arguments of :func:`hf_peft_suite.run_experiment`;
all four go through :func:`parse_arguments`, so they behave the same. Each source is a dictionary of argument names
to values; later ones override earlier ones::

    the dataclass defaults < the method's default learning rate < (--method all: its recommended settings)
        < --preset < JSON file < command-line flags < keyword arguments

The defaults written on the dataclasses below are the only place a default lives: they *are* the reference recipe
(t5-small on IMDB, batch 32, AdamW at a constant learning rate, 10 epochs, evaluation of generated label words after
every epoch), which is why ``--preset seed`` sets nothing. A method's default learning rate and recommended settings
live with the method (``methods/<method>.py``), the tiny preset in ``presets/tiny.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, Seq2SeqTrainingArguments
from transformers.hf_argparser import string_to_bool

from .compat import apply_4_57_training_flags, cpu_bf16_problem, default_report_to, restore_launcher_environment
from .errors import UsageError
from .methods import IMPLEMENTATIONS, METHODS
from .task import InputTemplate, label_map_pairs
from .training_flags import check_argument_packages

PER_METHOD_KEY = "per_method"


@dataclass
class ModelArguments:
    """Which base model to fine-tune."""

    model_name_or_path: str = field(
        default="t5-small",
        metadata={"help": "Hub id or local folder of an encoder-decoder model; 'builtin:tiny-t5' is built in code."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use, if not the model's own."}
    )
    random_init: bool = field(
        default=False,
        metadata={"help": "Build the model from its config with random weights (speed/memory benchmarks only)."},
    )


@dataclass
class DataArguments:
    """Which data, and how reviews and labels become model inputs and target words."""

    dataset_name: str = field(
        default="imdb",
        metadata={
            "help": "Hub dataset id, or a local folder (Hub layout, or csv/jsonl/parquet files named by split); "
            "'builtin:tiny-sentiment' is built in code."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "A csv/jsonl/parquet file for training."})
    eval_file: str | None = field(default=None, metadata={"help": "A csv/jsonl/parquet file for evaluation."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="test", metadata={"help": "Split to evaluate on (IMDB has no validation split)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the input text."})
    input_template: str | None = field(
        default=None,
        metadata={
            "help": "The input built from several columns, each named in braces: 'rte sentence1: {sentence1} "
            "sentence2: {sentence2}'. Cleaning applies to each column; truncation shortens the columns, longest "
            "first, never the template's own words. Replaces --text_column."
        },
    )
    source_prefix: str | None = field(
        default=None,
        metadata={"help": "Text put before --text_column, never truncated: 'sst2 sentence: ' (T5's task prefixes)."},
    )
    label_column: str = field(default="label", metadata={"help": "Column holding the class (id or string)."})
    label_words: list[str] | None = field(
        default=None,
        metadata={
            "help": "The word the model writes for each class: VALUE=WORD pairs ('Negative=negative "
            "Positive=positive', '0=no 1=yes', a ClassLabel's names: 'entailment=yes not_entailment=no'), or the "
            "words alone in class-id order (default: the ClassLabel names through the verbalizer neg->negative, "
            "pos->positive, or the string labels themselves)."
        },
    )
    clean_text: bool = field(
        default=True,
        metadata={"help": "The reference cleaning: lowercase and replace '<br />' by a space (--no_clean_text)."},
    )
    max_source_length: int = field(default=256, metadata={"help": "Truncate inputs to this many tokens."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a seeded, shuffled subset of this size."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on a seeded, shuffled subset of this size."}
    )

    def __post_init__(self):
        if self.input_template is not None and self.source_prefix is not None:
            raise UsageError(
                "give --input_template or --source_prefix, not both; put the prefix at the start of the template: "
                f"--input_template '{self.source_prefix}{{{self.text_column}}}'"
            )
        if self.input_template is not None:
            InputTemplate.parse(self.input_template)  # its syntax now; its columns once the data is loaded
        if self.label_words is not None:
            label_map_pairs(self.label_words)  # the form now; the values once the data is loaded
        if self.max_source_length <= 0:
            raise UsageError(f"--max_source_length must be a positive number of tokens, not {self.max_source_length}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"--{name} must be at least 1 (got {value}); leave it out to use the whole split")


@dataclass
class ExperimentArguments:
    """Which technique, and how."""

    method: str = field(
        default="full",
        metadata={"help": f"One of: {', '.join(METHODS)}; or all: every installed method x implementation, compared."},
    )
    implementation: str = field(
        default="scratch",
        metadata={"help": f"{' or '.join(IMPLEMENTATIONS)} (our own modules, or the PEFT library)."},
    )
    preset: str | None = field(
        default=None, metadata={"help": "A named set of defaults shipped with the package: tiny, seed."}
    )
    num_threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads for torch (default: torch's, one per core). On a machine other jobs share, "
                  "more threads than free cores stall each other; the tiny preset uses 1."},
    )
    seeds: list[int] | None = field(
        default=None,
        metadata={"help": "With --method all: run every cell once per seed (OUTPUT/<cell>/seed-<N>/) and report the "
                  "mean and standard deviation over them."},
    )
    verbose: bool = field(
        default=False, metadata={"help": "Show the libraries' own logs, warnings and progress bars (quiet otherwise)."}
    )
    figures: bool = field(
        default=True,
        metadata={"help": "Draw each run's learning_curves.png and a comparison's two figures. --no_figures: tables "
                  "and results.json only ('hf-peft-suite report' draws the comparison's later)."},
    )

    def __post_init__(self):
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)} (--method NAME)")
        if self.implementation not in IMPLEMENTATIONS:
            raise UsageError(
                f"unknown implementation {self.implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}"
            )
        if self.num_threads is not None and self.num_threads < 1:
            raise UsageError(f"--num_threads must be at least 1, not {self.num_threads}; leave it out for torch's default")


@dataclass
class TrainingArguments(Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` with the reference recipe's defaults, working on transformers 4.57 and 5.x."""

    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where results, the trained model and checkpoints go (default outputs/METHOD-IMPL-TIME)."},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output_dir that already holds a run."}
    )
    learning_rate: float = field(
        default=1e-5,
        metadata={"help": "Peak learning rate (default: the method's recommended rate; 1e-5, the reference recipe's, "
                  "when these arguments are built directly)."},
    )
    group_by_length: bool = field(
        default=False, metadata={"help": "Batch training examples of similar length together (less padding)."}
    )
    warmup_ratio: float = field(
        default=0.0, metadata={"help": "Linear warm-up over this share of the training steps (0 to 1)."}
    )
    num_train_epochs: float = field(default=10.0, metadata={"help": "Training epochs."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per device."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, steps, epoch."})
    logging_strategy: str = field(default="epoch", metadata={"help": "When to log the training loss."})
    save_strategy: str = field(default="no", metadata={"help": "When to write checkpoints: no, steps, epoch."})
    predict_with_generate: bool = field(default=True, metadata={"help": "Score generated label words."})
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "Under several processes, let DDP look for parameters that took no part in the forward "
                  "pass. Every cell uses all its trainable parameters, so it is off (Trainer's own default turns it on "
                  "and warns once per process that it found none)."},
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "The prepared data holds only model inputs; AdapterHub's T5 forward hides attention_mask "
                  "behind **kwargs, so dropping 'unused' columns would drop it."},
    )

    def __post_init__(self):
        restore_launcher_environment()
        for flag in ("fp16", "fp16_full_eval"):
            if getattr(self, flag):
                raise UsageError(
                    f"--{flag} is refused: T5 overflows in float16 (its feed-forward output exceeds the fp16 range and "
                    f"the loss becomes NaN); use --{flag.replace('fp16', 'bf16')} instead"
                )
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1, not {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise UsageError(
                f"--learning_rate must be positive, not {self.learning_rate}; leave it out for the method's default"
            )
        if not self.predict_with_generate:
            raise UsageError(
                "--predict_with_generate false would score no generated label words, which is what evaluation "
                "measures here; leave it out (it is true)"
            )
        self._refuse_what_generation_scoring_cannot_do()
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise UsageError(
                f"--num_train_epochs {self.num_train_epochs:g} trains nothing; give a positive number of epochs or "
                f"--max_steps N"
            )
        if (self.fsdp or self.deepspeed) and not torch.cuda.is_available():
            # Checked before Seq2SeqTrainingArguments sets accelerate's environment variables for it.
            flag = "--fsdp" if self.fsdp else "--deepspeed"
            raise UsageError(
                f"{flag} needs GPUs: on CPUs accelerate drops it and would run plain data parallelism instead; leave "
                f"{flag} out (several CPU processes: torchrun --nproc_per_node N ... --use_cpu true)"
            )
        if self.bf16 and not _has_accelerator():
            problem = cpu_bf16_problem()
            if problem:
                raise UsageError(f"--bf16 on this machine: {problem}; leave --bf16 out")
            # Trainer refuses bf16 without a GPU ("Your setup doesn't support bf16/gpu") unless told to use the CPU:
            # on a CPU with bf16 instructions it runs under torch's CPU autocast.
            self.use_cpu = True
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; skip the warning on CPU
        default_report_to(self)
        apply_4_57_training_flags(self)
        check_argument_packages(self)
        try:
            super().__post_init__()
        except UsageError:
            raise
        except (ValueError, ImportError) as error:
            raise UsageError(f"invalid training arguments: {error}") from None

    def _refuse_what_generation_scoring_cannot_do(self) -> None:
        """Flags that would take from evaluation what it scores: the generated words of the whole set, by label."""
        if self.prediction_loss_only:
            raise UsageError("--prediction_loss_only would skip generation, and evaluation here scores the generated "
                             "label words (eval_loss is computed too); leave it out")
        if self.batch_eval_metrics:
            raise UsageError("--batch_eval_metrics is not supported: accuracy and macro-F1 are computed once over the "
                             "whole evaluation set, each example once (also under several processes); leave it out")
        if not self.eval_do_concat_batches:
            raise UsageError("--eval_do_concat_batches false is not supported: the scorer needs the generated words "
                             "of the whole evaluation set in one array; leave it out")
        if self.label_names not in (None, ["labels"]):
            raise UsageError(f"--label_names {' '.join(self.label_names)}: the prepared data holds its targets as "
                             f"'labels'; leave --label_names out")


def _has_accelerator() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or (mps is not None and mps.is_available())


@dataclass
class ParsedArguments:
    """Everything one run needs, as parsed from flags, JSON, presets or keyword arguments.

    ``origins`` says which source set each argument that is not at its dataclass default (``"command line"``,
    ``"preset tiny"``, ``"method default"``, ...).
    """

    model: ModelArguments
    data: DataArguments
    experiment: ExperimentArguments
    training: TrainingArguments
    method_options: dict[str, Any]
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def options(self):
        """The chosen method's options dataclass (``None`` for full fine-tuning)."""
        return self.method_options.get(self.experiment.method)

    def to_dict(self) -> dict[str, Any]:
        options = self.options
        return {
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "experiment": dataclasses.asdict(self.experiment),
            "method_options": dataclasses.asdict(options) if options is not None else {},
            "training": json.loads(self.training.to_json_string()),
        }


# ----------------------------------------------------------------------------------------------------- the parser
class _Parser(HfArgumentParser):
    """An ``HfArgumentParser`` whose errors are one line, not the usage of two hundred flags."""

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def _argument_classes() -> list[type]:
    options = [method.options for method in METHODS.values() if method.options is not None]
    return [ModelArguments, DataArguments, ExperimentArguments, *options, TrainingArguments]


def build_parser() -> HfArgumentParser:
    """The parser over every dataclass: model, data, experiment, each method's options, training."""
    return _Parser(_argument_classes())


def all_argument_names() -> set[str]:
    return {f.name for cls in _argument_classes() for f in dataclasses.fields(cls) if f.init}


def _actions_by_name(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each argument's action (for booleans, the ``--name`` one rather than ``--no_name``)."""
    actions = {}
    for action in parser._actions:
        if action.dest != "help" and (action.dest not in actions or f"--{action.dest}" in action.option_strings):
            actions[action.dest] = action
    return actions


def parse_flags(argv: list[str], parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """The arguments a command line gives, typed by the parser, and only those (defaults are not filled in)."""
    parser = parser or build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [item for item in unknown if item.startswith("-")] or unknown
        name = flags[0].lstrip("-").split("=")[0]
        hint = NOT_FLAGS.get(name) or next((f"did you mean --{close}?" for close in [closest_argument(name)] if close),
                                           "see --help for the valid flags")
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)}; {hint}")
    return vars(namespace)


# Names users bring from other tools or older transformers releases, and the argument with the same meaning here
# (preferred to the closest spelling, which may mean something else: --num_beams is not --num_train_epochs).
SAME_MEANING = {
    "num_beams": "generation_num_beams",
    "evaluation_strategy": "eval_strategy",  # transformers' old name (removed in 4.46)
    "activation_checkpointing": "gradient_checkpointing",  # transformers 5.x's name; 4.57 has only the old one
    "no_cuda": "use_cpu",
    "lr": "learning_rate",
    "epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size",
    "train_batch_size": "per_device_train_batch_size",
    "eval_batch_size": "per_device_eval_batch_size",
    "max_seq_length": "max_source_length",
    "max_input_length": "max_source_length",
    "max_target_length": "generation_max_length",
    "model": "model_name_or_path",
    "model_name": "model_name_or_path",
    "dataset": "dataset_name",
    "lora_rank": "lora_r",
}
# Names that are no argument at all, and what to do instead.
NOT_FLAGS = {
    "compute_metrics": "compute_metrics is a Python function: pass it to run_experiment(compute_metrics=...) or to "
                       "GenerationAccuracyTrainer(compute_metrics=...)",
    "callbacks": "callbacks are Python objects: pass them to run_experiment(callbacks=[...])",
}


def closest_argument(name: str) -> str | None:
    """The argument a mistyped ``name`` most likely means: the one with the same meaning, else the closest spelling."""
    known = all_argument_names()
    if SAME_MEANING.get(name) in known:
        return SAME_MEANING[name]
    close = difflib.get_close_matches(name, known, n=1)
    return close[0] if close else None


def _coerce(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` (from JSON, a preset or a keyword) as the parser would have typed it on the command line."""
    if value is None or isinstance(value, dict):  # None: unset; dicts (fsdp_config, ...): TrainingArguments reads them
        return value
    if action.nargs in ("+", "*"):
        return [_coerce_one(action, item, where) for item in (value if isinstance(value, (list, tuple)) else [value])]
    if isinstance(value, (list, tuple)):  # report_to ["tensorboard"], ...: TrainingArguments reads them
        return list(value)
    return _coerce_one(action, value, where)


def _coerce_one(action: argparse.Action, value: Any, where: str) -> Any:
    convert = action.type or str
    try:
        if isinstance(value, bool) and convert is not string_to_bool:
            raise ValueError("a true/false value for an option that is not a switch")
        result = value if isinstance(value, bool) else convert(str(value))
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        raise UsageError(f"{where}: {action.dest} = {value!r} is not valid ({error})") from None
    if action.choices is not None and result not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise UsageError(f"{where}: {action.dest} = {value!r} is not one of {choices}")
    return result


# ------------------------------------------------------------------------------------------ presets and JSON files
def _presets_folder():
    return resources.files("hf_peft_suite") / "presets"


def preset_names() -> list[str]:
    return sorted(p.name[: -len(".json")] for p in _presets_folder().iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> dict[str, Any]:
    """The settings of a named preset shipped in ``hf_peft_suite/presets``."""
    path = _presets_folder() / f"{name}.json"
    if not path.is_file():
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())} (--preset NAME)")
    return json.loads(path.read_text())


def load_json_config(path: str | Path) -> dict[str, Any]:
    """A whole run as a JSON object of argument names to values; unknown keys are refused."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist; give the path of a JSON file of settings, such as "
                         f'run.json holding {{"preset": "tiny", "method": "lora"}}')
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UsageError(f"config file {path} is not valid JSON: {error}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not UTF-8 text; save it as UTF-8 JSON") from None
    if not isinstance(config, dict):
        raise UsageError(f"config file {path} must hold one JSON object of argument names to values")
    check_known_keys(config, f"config file {path}")
    return config


def check_known_keys(config: dict[str, Any], source: str) -> None:
    """Refuse keys that name no argument (``per_method`` holds per-method settings and is checked inside)."""
    known = all_argument_names()
    for key, value in config.items():
        if key.startswith("_"):  # comments, such as "_source": where the values come from
            continue
        if key == PER_METHOD_KEY:
            if not isinstance(value, dict) or not all(isinstance(item, dict) for item in value.values()):
                raise UsageError(
                    f"{source}: {PER_METHOD_KEY} must map method names to objects of settings, e.g. "
                    f'{{"lora": {{"learning_rate": 0.01}}}}'
                )
            for method, settings in value.items():
                if method not in METHODS:
                    raise UsageError(f"{source}: {PER_METHOD_KEY} names an unknown method {method!r}")
                check_known_keys(settings, f"{source} ({PER_METHOD_KEY}.{method})")
        elif key not in known:
            close = closest_argument(key)
            hint = NOT_FLAGS.get(key) or (f"did you mean {close!r}?" if close else "see --help for the valid names")
            raise UsageError(f"{source} has an unknown key {key!r}; {hint}")


def settings_for_method(settings: dict[str, Any], method: str) -> dict[str, Any]:
    """``settings`` with its ``per_method`` section for ``method`` merged in (that section wins); comments dropped."""
    per_method = settings.get(PER_METHOD_KEY) or {}
    merged = {**settings, **per_method.get(method, {})}
    return {key: value for key, value in merged.items() if key != PER_METHOD_KEY and not key.startswith("_")}


# ------------------------------------------------------------------------------------------------ the sources
@dataclass
class Sources:
    """Where one run's settings come from, each a dictionary of argument names to values (see the module docstring).

    Build it with :func:`collect_sources`; :meth:`layers` gives them in order, lowest first.
    """

    flags: dict[str, Any]
    keywords: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    config_path: str | None = None
    preset: dict[str, Any] = field(default_factory=dict)

    def _given(self, name: str) -> Any:
        for layer in (self.keywords, self.flags, self.config, self.preset):
            if layer.get(name) is not None:
                return layer[name]
        return None

    @property
    def method(self) -> str:
        """The ``--method`` asked for (``all`` included); ``full`` when none is."""
        return self._given("method") or "full"

    def setting(self, name: str) -> Any:
        """The value a user gave for ``name`` in any source (the last one wins), or ``None``."""
        return self._given(name)

    def layers(self, base_settings: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """``(origin, settings)`` lowest first, for :attr:`method` (``per_method`` sections merged in)."""
        method = self.method
        default_rate = {"learning_rate": METHODS[method].default_learning_rate} if method in METHODS else {}
        preset_name = self._given("preset")
        return [
            ("method default", default_rate),
            ("recommended settings", settings_for_method(base_settings or {}, method)),
            (f"preset {preset_name}", settings_for_method(self.preset, method)),
            (f"config file {self.config_path}", settings_for_method(self.config, method)),
            ("command line", self.flags),
            ("keyword arguments", self.keywords),
        ]


def collect_sources(argv: list[str] | None = None, **keywords: Any) -> Sources:
    """Read a command line (an optional JSON file first, then flags), the preset it names, and keyword arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if keywords:
        check_known_keys(keywords, "run_experiment()")
    config, config_path = {}, None
    if argv and argv[0].endswith(".json") and not argv[0].startswith("-"):
        config_path = argv.pop(0)
        config = load_json_config(config_path)
    sources = Sources(flags=parse_flags(argv), keywords=keywords, config=config, config_path=config_path)
    preset_name = sources.setting("preset")
    if preset_name:
        sources.preset = load_preset(preset_name)
    return sources


def parse_arguments(
    argv: list[str] | None = None, base_settings: dict[str, Any] | None = None, **keywords: Any
) -> ParsedArguments:
    """Parse a command line (``argv``; ``sys.argv`` when ``None``) and keyword arguments into :class:`ParsedArguments`.

    ``base_settings`` (a method's recommended settings, in the comparison) come just above the method's default
    learning rate; keyword arguments override everything.
    """
    return parse_sources(collect_sources(argv, **keywords), base_settings)


def parse_sources(sources: Sources, base_settings: dict[str, Any] | None = None, **keywords: Any) -> ParsedArguments:
    """Layer ``sources`` (plus ``keywords`` on top) into the dataclasses of one run."""
    if keywords:
        sources = dataclasses.replace(sources, keywords={**sources.keywords, **keywords})
    actions = _actions_by_name(build_parser())
    settings, origins = {}, {}
    for origin, layer in sources.layers(base_settings):
        for name, value in layer.items():
            if value is None:
                continue
            settings[name] = value if origin == "command line" else _coerce(actions[name], value, origin)
            origins[name] = origin
    built = {}
    for cls in _argument_classes():
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        built[cls] = cls(**{name: value for name, value in settings.items() if name in names})
    option_classes = {name: method.options for name, method in METHODS.items() if method.options is not None}
    return ParsedArguments(
        model=built[ModelArguments],
        data=built[DataArguments],
        experiment=built[ExperimentArguments],
        training=built[TrainingArguments],
        method_options={name: built[cls] for name, cls in option_classes.items()},
        origins=origins,
    )


def recipe_train_batch(args: ParsedArguments) -> tuple[int, str]:
    """The batch of one optimizer step that the run's preset sets, on one process (the seed recipe's 32 when no preset
    is named), and the recipe's name: what its learning rate and schedule were chosen for."""
    preset = args.experiment.preset
    settings = settings_for_method(load_preset(preset), args.experiment.method) if preset else {}
    defaults = {field.name: field.default for field in dataclasses.fields(TrainingArguments)}
    batch = settings.get("per_device_train_batch_size", defaults["per_device_train_batch_size"])
    steps = settings.get("gradient_accumulation_steps", defaults["gradient_accumulation_steps"])
    return int(batch) * int(steps), f"the {preset} preset" if preset and preset != "seed" else "the seed recipe"


def requested_method(argv: list[str]) -> str:
    """The ``--method`` a command line asks for, from its flags, JSON file or preset (``all`` included)."""
    return collect_sources(argv).method
