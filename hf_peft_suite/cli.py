"""The command line: ``python run_experiment.py [CONFIG.json] [--flags]`` or ``hf-peft-suite [...]``.

- ``--method all`` runs every installed method x implementation and writes the comparison table and plot;
- ``hf-peft-suite report DIR [DIR ...] [--output_dir OUT]`` rebuilds them from existing ``results.json`` files;
- ``hf-peft-suite push OUTPUT_DIR --hub_model_id NAME`` pushes a finished run's trained delta and model card to the
  Hugging Face Hub (what ``--push_to_hub`` does after training).

Every flag of the project's dataclasses and of ``Seq2SeqTrainingArguments`` works (``--help`` lists them). A user's
mistake (a :class:`~hf_peft_suite.errors.UsageError`) prints one line, ``error: <problem and fix>``, and exits with
code 2; anything else is a bug and shows its traceback. ``HF_PEFT_SUITE_TRACEBACK=1`` shows the traceback of a
``UsageError`` too, for bug reports.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from .errors import UsageError

EXIT_USAGE = 2
TRACEBACK_VARIABLE = "HF_PEFT_SUITE_TRACEBACK"


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # (transformers 5 draws one while writing each model shard)
    logging.getLogger("datasets").setLevel(logging.ERROR)
    import datasets

    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    """Run one experiment from the command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    finished = False
    try:
        _quiet_libraries()
        if argv[:1] == ["report"]:
            return report_main(argv[1:])
        if argv[:1] == ["push"]:
            return push_main(argv[1:])
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _close_process_group(wait_for_others=finished)
    return 0


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


def report_main(argv: list[str]) -> int:
    """``report DIR [DIR ...] [--output_dir OUT]``: the comparison files from finished runs."""
    from .report import write_report

    parser = _SubcommandParser(prog="hf-peft-suite report", description=report_main.__doc__)
    parser.add_argument("directories", nargs="+", help="run folders, or folders holding run folders")
    parser.add_argument("--output_dir", default=None, help="where to write comparison.* (default: the first DIR)")
    options = parser.parse_args(argv)
    paths = write_report(options.directories, options.output_dir)
    print(paths["md"].read_text())
    print("written: " + ", ".join(str(path) for path in paths.values()))
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


if __name__ == "__main__":
    sys.exit(main())
