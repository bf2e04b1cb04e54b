"""The short ``--help``: the subcommands, the project's own flags and the most used training flags, on one screen
(each flag's help in at most two lines, cut with "..." where longer; ``--help_all`` has it whole).

``python run_experiment.py --help`` prints ``help.txt`` (beside this file) without importing torch or transformers,
which takes 3 to 9 seconds on a small machine: ``run_experiment.py`` loads this module by its path, and nothing here
imports more than the standard library at module level. ``--help_all`` prints the full parser's help (every
``Seq2SeqTrainingArguments`` flag). ``help.txt`` is rendered from the argument dataclasses by :func:`render_short_help`;
``python -m hf_peft_suite.help --write`` renders it again after a flag changes (a test says when it is out of date).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

HELP_FILE = Path(__file__).with_name("help.txt")
HELP_FLAGS = ("-h", "--help")
HELP_ALL_FLAGS = ("--help_all", "--help-all")
WIDTH, FLAG_COLUMN, MAX_HELP_LINES = 118, 34, 2

# Every subcommand of hf_peft_suite.cli.SUBCOMMANDS, with its usage and one line (a test checks that none is missing).
SUBCOMMANDS = {
    "report": ("report DIR [DIR ...] [--output_dir OUT]", "the comparison table and figures, rebuilt from finished runs"),
    "push": ("push OUTPUT_DIR [--hub_model_id NAME]", "upload a finished run's trained delta and model card to the Hub"),
    "evaluate": ("evaluate RUN_DIR [--output_dir DIR] [data flags]", "evaluate a finished run on its own or other data"),
    "predict": ('predict RUN_DIR "text" ... | --input_file FILE', "the label word a finished run writes for each text"),
}

# The most used Seq2SeqTrainingArguments flags, each with a short line (the project's default is added to it).
TRAINING_FLAGS = {
    "output_dir": "Where results, the trained model and figures go (default: outputs/METHOD-IMPL-TIME).",
    "overwrite_output_dir": "Allow writing into an output_dir that already holds a run.",
    "num_train_epochs": "Training epochs.",
    "max_steps": "Stop after this many optimizer steps (overrides --num_train_epochs).",
    "learning_rate": "Peak learning rate.",
    "lr_scheduler_type": "Learning-rate schedule: constant, linear, cosine, ...",
    "warmup_ratio": "Linear warm-up over this share of the training steps.",
    "per_device_train_batch_size": "Training batch size per process; one step sees it x processes x "
                                   "gradient_accumulation_steps (keep 32 on N GPUs: 32/N).",
    "per_device_eval_batch_size": "Evaluation batch size per device.",
    "gradient_accumulation_steps": "Batches per optimizer step.",
    "seed": "Random seed (weights of new modules, data order, subsets).",
    "bf16": "Train and evaluate in bfloat16 mixed precision (GPUs, and CPUs with bf16 instructions).",
    "use_cpu": "Run on the CPU even where a GPU is present.",
    "group_by_length": "Batch training examples of similar length together (less padding).",
    "eval_strategy": "When to evaluate: no, steps, epoch.",
    "eval_steps": "Evaluate every N steps (with --eval_strategy steps).",
    "eval_on_start": "Evaluate once before training too: epoch 0, the accuracy before any training.",
    "logging_strategy": "When to log the training loss: no, steps, epoch.",
    "logging_steps": "Log every N steps (with --logging_strategy steps).",
    "save_strategy": "When to write checkpoints (trainable weights only): no, steps, epoch.",
    "save_steps": "Checkpoint every N steps (with --save_strategy steps).",
    "resume_from_checkpoint": "Continue a stopped run from a checkpoint folder, or 'last'.",
    "report_to": "Send metrics to trackers too: tensorboard, wandb, ... (default: none).",
    "push_to_hub": "Upload the trained delta and a model card to the Hub after training.",
    "hub_model_id": "USER/NAME of the Hub repository to push to.",
}


def wants_short_help(argv: list[str]) -> bool:
    """Whether a command line asks for the short help (``-h`` / ``--help``, not after a subcommand)."""
    return (not argv or argv[0] not in SUBCOMMANDS) and any(arg in HELP_FLAGS for arg in argv) \
        and not any(arg in HELP_ALL_FLAGS for arg in argv)


def wants_full_help(argv: list[str]) -> bool:
    """Whether a command line asks for every flag (``--help_all``)."""
    return (not argv or argv[0] not in SUBCOMMANDS) and any(arg in HELP_ALL_FLAGS for arg in argv)


def short_help() -> str:
    return HELP_FILE.read_text(encoding="utf-8")


def print_short_help_if_asked(argv: list[str]) -> bool:
    """Print the short help if ``argv`` asks for it; return whether it did (``run_experiment.py`` calls this first)."""
    if not wants_short_help(argv):
        return False
    sys.stdout.write(short_help())
    return True


# ------------------------------------------------------------------------------------------- rendering help.txt
def _metavar(action) -> str:
    if action.choices:
        value = "{" + ",".join(map(str, action.choices)) + "}"
    elif action.nargs == "?":  # a switch: --name, or --name true/false
        return ""
    else:
        name = action.dest
        value = ("DIR" if name.endswith("_dir") else "FILE" if name.endswith("_file")
                 else "N" if action.type is int else "X" if action.type is float else "NAME" if "name" in name
                 else "VALUE")
    return f"{value} [{value} ...]" if action.nargs in ("+", "*") else value


def _default_text(value) -> str:
    if value is None or isinstance(value, bool) or value == "" or value == [] or value == -1:  # -1: none
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (list, tuple)):
        value = " ".join(map(str, value))
    return f" (default: {value})"


def _flag_lines(head: str, text: str, default: str = "") -> list[str]:
    """The flag, and its help in at most :data:`MAX_HELP_LINES` lines (cut with "...", its default kept)."""
    head = f"  {head}"
    if len(head) >= FLAG_COLUMN - 1:
        lines, first = [head], " " * FLAG_COLUMN
    else:
        lines, first = [], head.ljust(FLAG_COLUMN)
    words = text.split()
    for kept in range(len(words), -1, -1):  # the whole text is in --help_all
        cut = " ".join(words[:kept]) + (" ..." if kept < len(words) else "") + default
        wrapped = textwrap.wrap(cut, WIDTH, initial_indent=first, subsequent_indent=" " * FLAG_COLUMN)
        if len(wrapped) <= MAX_HELP_LINES:
            return lines + wrapped
    return lines + [first.rstrip()]


def _field_lines(field, action) -> list[str]:
    import dataclasses

    default = field.default if field.default is not dataclasses.MISSING else (
        field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
    name = f"--{field.name}"
    if action.nargs == "?" and default is True:
        name = f"--{field.name} / --no_{field.name}"
    text = " ".join(field.metadata.get("help", "").split())
    return _flag_lines(f"{name} {_metavar(action)}".rstrip(), text, _default_text(default))


def render_short_help() -> str:
    """The text of ``help.txt``, from the argument dataclasses, the methods and :data:`TRAINING_FLAGS`."""
    import dataclasses

    from .arguments import (
        DataArguments,
        ExperimentArguments,
        ModelArguments,
        TrainingArguments,
        _actions_by_name,
        build_parser,
    )
    from .methods import METHODS

    actions = _actions_by_name(build_parser())
    lines = [
        "usage: python run_experiment.py [CONFIG.json] [--flag VALUE ...]",
        "       hf-peft-suite [CONFIG.json] [--flag VALUE ...]",
        f"       hf-peft-suite {{{','.join(SUBCOMMANDS)}}} ...   (each with its own --help)",
        "",
        "Fine-tune T5 to write a label word (IMDB sentiment by default; any classification task with --input_template",
        "and --label_words) with one PEFT method (--method), or train every method x",
        "implementation and compare them (--method all). Flags override a JSON file of settings (CONFIG.json), which",
        "overrides --preset. This lists the project's flags and the most used training flags; --help_all lists every",
        "flag (every Seq2SeqTrainingArguments flag works).",
        "",
        "subcommands:",
    ]
    for usage, line in SUBCOMMANDS.values():
        lines += _flag_lines(usage, line)

    def section(title: str, cls) -> None:
        lines.extend(["", f"{title}:"])
        for field in dataclasses.fields(cls):
            if field.name == "method":
                lines.extend(_flag_lines(f"--method {{{','.join([*METHODS, 'all'])}}}",
                                         " ".join(field.metadata["help"].split()) + " (default: full)"))
            elif field.init:
                lines.extend(_field_lines(field, actions[field.name]))

    section("experiment", ExperimentArguments)
    section("model", ModelArguments)
    section("data", DataArguments)
    for method in METHODS.values():
        if method.options is not None:
            section(f"--method {method.name}", method.options)
    lines.extend(["", "training (the most used; every Seq2SeqTrainingArguments flag works, --help_all lists them):"])
    fields = {field.name: field for field in dataclasses.fields(TrainingArguments)}
    rates = ", ".join(f"{name} {method.default_learning_rate:g}" for name, method in METHODS.items())
    for name, text in TRAINING_FLAGS.items():
        action, field = actions[name], fields[name]
        if name == "learning_rate":
            text += f" (default: the method's own: {rates})"
        elif name not in ("output_dir", "report_to"):
            text += _default_text(field.default)
        lines.extend(_flag_lines(f"--{name} {_metavar(action)}".rstrip(), text))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m hf_peft_suite.help [--write]``: print the rendered short help, or write it to ``help.txt``."""
    argv = sys.argv[1:] if argv is None else argv
    text = render_short_help()
    if "--write" in argv:
        HELP_FILE.write_text(text, encoding="utf-8")
        print(f"written: {HELP_FILE} ({text.count(chr(10))} lines)")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
