"""The command line: ``python run_experiment.py [CONFIG.json] [--flags]`` or ``hf-peft-suite [...]``.

- ``--method all`` runs every installed method x implementation and writes the comparison table and figures;
- ``hf-peft-suite report DIR [DIR ...] [--output_dir OUT]`` rebuilds them from existing ``results.json`` files;
- ``hf-peft-suite push OUTPUT_DIR --hub_model_id NAME`` pushes a finished run's trained delta and model card to the
  Hugging Face Hub (what ``--push_to_hub`` does after training);
- ``hf-peft-suite evaluate RUN_DIR [--output_dir DIR] [data flags]`` evaluates a finished run, on its own evaluation
  data or other data, and writes ``eval_results.json`` and ``eval_predictions.json`` (works under ``torchrun``);
- ``hf-peft-suite predict RUN_DIR "text" ...`` prints the label word the run's model writes for each text;
  ``--input_file FILE`` labels a csv/jsonl/parquet file's texts into ``predictions.jsonl`` and ``summary.json``.

Every flag of the project's dataclasses and of ``Seq2SeqTrainingArguments`` works: ``--help`` lists the project's
flags and the most used training flags (:mod:`hf_peft_suite.help`), ``--help_all`` every flag. A user's
mistake (a :class:`~hf_peft_suite.errors.UsageError`) prints one line, ``error: <problem and fix>``, and exits with
code 2; anything else is a bug and shows its traceback. ``HF_PEFT_SUITE_TRACEBACK=1`` shows the traceback of a
``UsageError`` too, for bug reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path

from .errors import ProcessesStopped, UsageError, is_main_process

EXIT_USAGE = 2
TRACEBACK_VARIABLE = "HF_PEFT_SUITE_TRACEBACK"


def _quiet_libraries(argv: list[str]) -> None:
    """The libraries' logs, warnings and progress bars off, unless ``--verbose`` (see :mod:`hf_peft_suite.quiet`)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from .quiet import apply_library_output

    apply_library_output(_verbose_flag(argv))


def _verbose_flag(argv: list[str]) -> bool:
    """``--verbose`` as the parser will read it (``--verbose``, ``--verbose no``, ``--verbose=true``), looked up before
    the arguments are parsed so that loading is quiet too; a JSON config's ``verbose`` applies once it is parsed."""
    for position, item in enumerate(argv):
        if item == "--verbose":
            value = argv[position + 1] if position + 1 < len(argv) and not argv[position + 1].startswith("-") else "true"
        elif item.startswith("--verbose="):
            value = item.partition("=")[2]
        else:
            continue
        return value.lower() not in ("no", "false", "f", "n", "0")  # transformers' string_to_bool
    return False


def main(argv: list[str] | None = None) -> int:
    """Run one experiment from the command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    finished = False
    try:
        if _print_help(argv):
            return 0
        _quiet_libraries(argv)
        if argv[:1] and argv[0] in SUBCOMMANDS:
            code = SUBCOMMANDS[argv[0]](argv[1:])
            finished = True
            return code
        from .arguments import parse_arguments, requested_method
        from .experiment import run_parsed_experiment

        if requested_method(argv) == "all":
            from .comparison import run_comparison

            run_comparison(argv)
        else:
            run_parsed_experiment(parse_arguments(argv))
        finished = True
    except UsageError as error:
        if os.environ.get(TRACEBACK_VARIABLE, "").lower() in ("1", "true", "yes"):
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ProcessesStopped as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _close_process_group(wait_for_others=finished)
    return 0


def _print_help(argv: list[str]) -> bool:
    """``--help``: the short help (hf_peft_suite/help.txt); ``--help_all``: every flag. Whether it printed one."""
    from .help import print_short_help_if_asked, wants_full_help

    if print_short_help_if_asked(argv):
        return True
    if wants_full_help(argv):
        from .arguments import build_parser

        build_parser().print_help()
        return True
    return False


def _close_process_group(wait_for_others: bool) -> None:
    """Shut the distributed process group down before the interpreter exits.

    Left to interpreter shutdown, gloo's background threads can abort a process ("terminate called without an active
    exception", exit -6) after its work is done. After a successful run every process waits for the others first; after
    an error it does not (the others may never get there).
    """
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return
    if wait_for_others:
        distributed.barrier()
    distributed.destroy_process_group()


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser whose errors are one ``error:`` line (exit 2), like the main command's."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")

    def format_help(self) -> str:
        return super().format_help().replace("``", "")  # the descriptions are docstrings, in reStructuredText


def report_main(argv: list[str]) -> int:
    """``report DIR [DIR ...] [--output_dir OUT]``: the comparison table (md, csv, json) and its figures
    (comparison.png, learning_curves.png) from finished runs, one row per run folder (a folder of seed-N runs: their
    mean ± std)."""
    from .report import write_report

    parser = _SubcommandParser(prog="hf-peft-suite report", description=report_main.__doc__)
    parser.add_argument("directories", nargs="+", help="run folders, or folders holding run folders")
    parser.add_argument("--output_dir", default=None, help="where to write comparison.* (default: the first DIR)")
    options = parser.parse_args(argv)
    notices: list[str] = []
    paths = write_report(options.directories, options.output_dir, notices=notices)
    print(paths["md"].read_text())
    print("\n".join([*notices, "written: " + ", ".join(str(path) for path in paths.values())]))
    return 0


def push_main(argv: list[str]) -> int:
    """``push OUTPUT_DIR [--hub_model_id NAME]``: push a finished run's trained delta, its config and a model card."""
    from .hub import push_to_hub

    parser = _SubcommandParser(prog="hf-peft-suite push", description=push_main.__doc__)
    parser.add_argument("output_dir", help="the --output_dir of a finished run (with results.json and model/)")
    parser.add_argument("--hub_model_id", default=None, help="USER/NAME or NAME (default: the folder's name)")
    parser.add_argument("--hub_token", default=None, help="default: HF_TOKEN or the token of `hf auth login`")
    parser.add_argument("--hub_private_repo", action="store_true", help="create the repository as private")
    parser.add_argument("--hub_revision", default=None, help="push to this branch")
    options = parser.parse_args(argv)
    record = push_to_hub(options.output_dir, options.hub_model_id, options.hub_token,
                         True if options.hub_private_repo else None, options.hub_revision)
    print(f"pushed {', '.join(record['files'])} to {record['url']}")
    return 0


def evaluate_main(argv: list[str]) -> int:
    """``evaluate RUN_DIR [--output_dir DIR] [--dataset_name ... --eval_file ... --max_eval_samples N ...]``."""
    from .arguments import DataArguments, parse_flags
    from .run_folder import timestamp
    from .runs import EVAL_RESULTS_NAME, evaluate_run

    if {"-h", "--help"} & set(argv):
        _evaluation_parser().print_help()
        return 0
    if not argv or argv[0].startswith("-"):
        raise UsageError("evaluate needs the folder of a finished run: hf-peft-suite evaluate RUN_DIR [--output_dir DIR]"
                         " (see hf-peft-suite evaluate --help)")
    run_dir, flags = argv[0], parse_flags(argv[1:], _evaluation_parser())
    training_only = sorted({"train_file", "train_split", "max_train_samples"} & set(flags))
    if training_only:
        raise UsageError(f"evaluate uses no training data: leave out --{', --'.join(training_only)}")
    options = {key: flags.pop(key) for key in ("output_dir", "per_device_eval_batch_size", "bf16") if key in flags}
    if options.get("output_dir") is None:
        options["output_dir"] = f"outputs/evaluate-{Path(run_dir).absolute().name}-{timestamp()}"
    assert set(flags) <= {f.name for f in dataclasses.fields(DataArguments)}
    metrics = evaluate_run(run_dir, **options, **flags)
    if is_main_process():
        print(json.dumps(metrics, indent=2))
        print(f"written: {Path(options['output_dir']) / EVAL_RESULTS_NAME}")
    return 0


@dataclasses.dataclass
class _EvaluationOptions:
    """Options of ``hf-peft-suite evaluate`` besides the data flags."""

    output_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "Where to write eval_results.json and eval_predictions.json (a new folder)."})
    per_device_eval_batch_size: int | None = dataclasses.field(
        default=None, metadata={"help": "Evaluation batch size per device (default: the run's)."})
    bf16: bool = dataclasses.field(default=False, metadata={"help": "Evaluate under bfloat16 autocast."})


def _evaluation_parser():
    from transformers import HfArgumentParser

    from .arguments import DataArguments

    class Parser(HfArgumentParser):
        def error(self, message):
            raise UsageError(f"{message} (see hf-peft-suite evaluate --help)")

    return Parser([DataArguments, _EvaluationOptions], prog="hf-peft-suite evaluate RUN_DIR")


def predict_main(argv: list[str]) -> int:
    """``predict RUN_DIR "text" ...`` or ``predict RUN_DIR --input_file FILE [--output_dir DIR]``."""
    from .run_folder import timestamp
    from .runs import load_run, predict_file

    parser = _SubcommandParser(prog="hf-peft-suite predict", description=predict_main.__doc__)
    parser.add_argument("run_dir", help="the --output_dir of a finished run")
    parser.add_argument("texts", nargs="*", help="texts to label (cleaned, put into the run's input template and "
                        "truncated as in training; a template of several columns needs --input_file)")
    parser.add_argument("--input_file", default=None, help="a csv/jsonl/parquet file with the columns the run reads")
    parser.add_argument("--text_column", default=None, help="its column of texts (default: the run's text column, or "
                        "the one column of its input template)")
    parser.add_argument("--output_dir", default=None, help="where --input_file's predictions.jsonl and summary.json go")
    parser.add_argument("--batch_size", type=int, default=32, help="texts per generate call")
    options = parser.parse_args(argv)
    if bool(options.texts) == bool(options.input_file):
        raise UsageError('give texts to label, or --input_file FILE (not both): hf-peft-suite predict RUN_DIR "text"')
    if options.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, not {options.batch_size}")
    if options.input_file:
        output_dir = options.output_dir or f"outputs/predict-{Path(options.input_file).stem}-{timestamp()}"
        summary = predict_file(options.run_dir, options.input_file, output_dir, options.text_column,
                               options.batch_size)
        print(json.dumps(summary, indent=2))
        return 0
    for prediction in load_run(options.run_dir).predict(options.texts, batch_size=options.batch_size):
        label = prediction.label if prediction.valid else f"invalid (wrote {prediction.output!r})"
        print(f"{label}\t{prediction.text}")
    return 0


SUBCOMMANDS = {"report": report_main, "push": push_main, "evaluate": evaluate_main, "predict": predict_main}


if __name__ == "__main__":
    sys.exit(main())
