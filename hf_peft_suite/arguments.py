"""Command-line and JSON arguments: the project's dataclasses plus every ``Seq2SeqTrainingArguments`` flag.

One run is described by flags, a JSON file, a preset, or keyword arguments of :func:`hf_peft_suite.run_experiment`;
all four go through :func:`parse_arguments`, so they behave the same. Later sources override earlier ones:
preset < JSON file < command-line flags.

The defaults reproduce the reference recipe (t5-small on IMDB, batch 32, AdamW at a constant learning rate, 10
epochs, evaluation of generated label words after every epoch).
"""

from __future__ import annotations

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

from .errors import UsageError
from .methods import IMPLEMENTATIONS, METHODS

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
    label_column: str = field(default="label", metadata={"help": "Column holding the class (id or string)."})
    label_words: list[str] | None = field(
        default=None,
        metadata={
            "help": "The word the model writes for each class, in class-id order (default: the ClassLabel names "
            "through the verbalizer neg->negative, pos->positive, or the string labels themselves)."
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
        if self.max_source_length <= 0:
            raise UsageError(f"--max_source_length must be a positive number of tokens, not {self.max_source_length}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"--{name} must be at least 1 (got {value}); leave it out to use the whole split")


@dataclass
class ExperimentArguments:
    """Which technique, and how."""

    method: str = field(default="full", metadata={"help": f"One of: {', '.join(METHODS)}."})
    implementation: str = field(
        default="scratch",
        metadata={"help": f"{' or '.join(IMPLEMENTATIONS)} (our own modules, or the PEFT library)."},
    )
    preset: str | None = field(
        default=None, metadata={"help": "A named set of defaults shipped with the package: tiny, seed."}
    )

    def __post_init__(self):
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)} (--method NAME)")
        if self.implementation not in IMPLEMENTATIONS:
            raise UsageError(
                f"unknown implementation {self.implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}"
            )


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
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate (default: the method's documented default)."}
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
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "The prepared data holds only model inputs; AdapterHub's T5 forward hides attention_mask "
                  "behind **kwargs, so dropping 'unused' columns would drop it."},
    )

    def __post_init__(self):
        if self.fp16:
            raise UsageError(
                "--fp16 is refused: T5 overflows in float16 (its feed-forward output exceeds the fp16 range and the "
                "loss becomes NaN); use --bf16 instead"
            )
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1, not {getattr(self, name)}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise UsageError(
                f"--learning_rate must be positive, not {self.learning_rate}; leave it out for the method's default"
            )
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise UsageError(
                f"--num_train_epochs {self.num_train_epochs:g} trains nothing; give a positive number of epochs or "
                f"--max_steps N"
            )
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; skip the warning on CPU
        if self.report_to is None:  # transformers 4.57 would report to every installed tracker
            self.report_to = "none"
        if "train_sampling_strategy" in {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)}:
            # transformers 5 spells these differently; accept the 4.57 flags on both
            if self.group_by_length:
                self.train_sampling_strategy = "group_by_length"
            if self.warmup_ratio and not self.warmup_steps:
                self.warmup_steps = self.warmup_ratio  # a float in [0, 1) is a ratio on 5.x
        try:
            super().__post_init__()
        except UsageError:
            raise
        except (ValueError, ImportError) as error:
            raise UsageError(f"invalid training arguments: {error}") from None


@dataclass
class ParsedArguments:
    """Everything one run needs, as parsed from flags, JSON, presets or keyword arguments."""

    model: ModelArguments
    data: DataArguments
    experiment: ExperimentArguments
    training: TrainingArguments
    method_options: dict[str, Any]

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


class _Parser(HfArgumentParser):
    """An ``HfArgumentParser`` whose errors are one line, not the usage of two hundred flags."""

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def _option_classes() -> dict[str, type]:
    return {name: method.options for name, method in METHODS.items() if method.options is not None}


def build_parser() -> HfArgumentParser:
    """The parser over every dataclass: model, data, experiment, each method's options, training."""
    classes = [ModelArguments, DataArguments, ExperimentArguments, *_option_classes().values(), TrainingArguments]
    return _Parser(classes)


def all_argument_names() -> set[str]:
    classes = [ModelArguments, DataArguments, ExperimentArguments, *_option_classes().values(), TrainingArguments]
    return {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}


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
        raise UsageError(f"config file {path} does not exist; give the path of a JSON file such as configs/tiny.json")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"config file {path} is not valid JSON: {error}") from None
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
            for method, settings in (value or {}).items():
                if method not in METHODS:
                    raise UsageError(f"{source}: {PER_METHOD_KEY} names an unknown method {method!r}")
                check_known_keys(settings, f"{source} ({PER_METHOD_KEY}.{method})")
        elif key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; see --help for the valid names"
            raise UsageError(f"{source} has an unknown key {key!r}{hint}")


def settings_for_method(settings: dict[str, Any], method: str) -> dict[str, Any]:
    """``settings`` with its ``per_method`` section for ``method`` merged in (that section wins)."""
    settings = dict(settings)
    per_method = settings.pop(PER_METHOD_KEY, None) or {}
    return {**settings, **per_method.get(method, {})}


def config_to_argv(config: dict[str, Any]) -> list[str]:
    """Turn ``{"lora_r": 8, "label_words": ["a", "b"], "bf16": true}`` into the equivalent command-line flags."""
    argv: list[str] = []
    for key, value in config.items():
        if value is None or key.startswith("_"):
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def _split_sources(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(preset settings, JSON file settings, remaining flags) of a command line."""
    argv = list(argv)
    config: dict[str, Any] = {}
    if argv and argv[0].endswith(".json") and not argv[0].startswith("-"):
        config = load_json_config(argv.pop(0))
    preset_name = _flag_value(argv, "--preset") or config.get("preset")
    preset = load_preset(preset_name) if preset_name else {}
    return preset, config, argv


def _method_of(preset: dict[str, Any], config: dict[str, Any], flags: list[str]) -> str:
    return _flag_value(flags, "--method") or config.get("method") or preset.get("method") or "full"


def requested_method(argv: list[str]) -> str:
    """The ``--method`` a command line asks for, from its flags, JSON file or preset (``all`` included)."""
    return _method_of(*_split_sources(argv))


def _expand_sources(argv: list[str], base_settings: dict[str, Any] | None = None) -> list[str]:
    """Order the sources so later ones win: base settings < preset < JSON file < flags."""
    preset, config, argv = _split_sources(argv)
    method = _method_of(preset, config, argv)
    return (
        config_to_argv(settings_for_method(base_settings or {}, method))
        + config_to_argv(settings_for_method(preset, method))
        + config_to_argv(settings_for_method(config, method))
        + argv
    )


def _flag_value(argv: list[str], flag: str) -> str | None:
    value = None
    for index, item in enumerate(argv):
        if item == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif item.startswith(flag + "="):
            value = item.split("=", 1)[1]
    return value


def parse_arguments(
    argv: list[str] | None = None, base_settings: dict[str, Any] | None = None, **overrides: Any
) -> ParsedArguments:
    """Parse command-line flags (``argv``), then apply keyword ``overrides`` (the Python API's arguments).

    ``base_settings`` (a method's recommended settings, in the comparison) come before everything else.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if overrides:
        check_known_keys(overrides, "run_experiment()")
        argv += config_to_argv(overrides)
    argv = _expand_sources(argv, base_settings)
    parser = build_parser()
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        flags = [item for item in unknown if item.startswith("-")] or unknown
        close = difflib.get_close_matches(flags[0].lstrip("-").split("=")[0], all_argument_names(), n=1)
        hint = f"; did you mean --{close[0]}?" if close else "; see --help for the valid flags"
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    model, data, experiment, *options, training = parsed
    option_classes = list(_option_classes())
    return ParsedArguments(model, data, experiment, training, dict(zip(option_classes, options)))

