"""The command line: ``python run_experiment.py [CONFIG.json] [--flags]`` or ``hf-peft-suite [...]``.

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
        from .arguments import parse_arguments
        from .experiment import run_parsed_experiment

        run_parsed_experiment(parse_arguments(argv))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
