"""The command line: ``python run_experiment.py [CONFIG.json] [--flags]`` or ``hf-peft-suite [...]``.

- ``--method all`` runs every installed method x implementation and writes the comparison table and plot;
- ``hf-peft-suite report DIR [DIR ...] [--output_dir OUT]`` rebuilds them from existing ``results.json`` files.

Every flag of the project's dataclasses and of ``Seq2SeqTrainingArguments`` works (``--help`` lists them). A user's
mistake prints one line, ``error: <problem and fix>``, and exits with code 2; never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

from .errors import UsageError

EXIT_USAGE = 2


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    logging.getLogger("datasets").setLevel(logging.ERROR)
    import datasets

    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    """Run one experiment from the command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _quiet_libraries()
        if argv[:1] == ["report"]:
            return report_main(argv[1:])
        from .arguments import parse_arguments, requested_method
        from .experiment import run_parsed_experiment

        if requested_method(argv) == "all":
            from .comparison import run_comparison

            run_comparison(argv)
        else:
            run_parsed_experiment(parse_arguments(argv))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def report_main(argv: list[str]) -> int:
    """``report DIR [DIR ...] [--output_dir OUT]``: the comparison files from finished runs."""
    import argparse

    from .report import write_report

    parser = argparse.ArgumentParser(prog="hf-peft-suite report", description=report_main.__doc__)
    parser.add_argument("directories", nargs="+", help="run folders, or folders holding run folders")
    parser.add_argument("--output_dir", default=None, help="where to write comparison.* (default: the first DIR)")
    options = parser.parse_args(argv)
    paths = write_report(options.directories, options.output_dir)
    print(paths["md"].read_text())
    print("written: " + ", ".join(str(path) for path in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
