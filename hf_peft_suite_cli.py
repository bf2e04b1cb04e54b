"""The ``hf-peft-suite`` command and ``python run_experiment.py``: the short ``--help`` at once, everything else from
:func:`hf_peft_suite.cli.main`.

A module beside the package, not in it: importing anything inside ``hf_peft_suite`` runs the package's
``__init__``, which registers the hand-written methods with transformers' Auto classes and so imports torch and
transformers (3 to 9 seconds on a small machine). ``hf_peft_suite/help.py`` needs only the standard library and is
loaded by its path, so ``--help`` prints in a fraction of a second.
"""

import importlib.util
import os
import sys


def print_short_help_if_asked(argv: list[str]) -> bool:
    """Print the short help when ``argv`` asks for it (``-h``/``--help``, not after a subcommand); whether it did."""
    package = importlib.util.find_spec("hf_peft_suite")
    if package is None or not package.submodule_search_locations:
        return False
    path = os.path.join(list(package.submodule_search_locations)[0], "help.py")
    spec = importlib.util.spec_from_file_location("hf_peft_suite_short_help", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.print_short_help_if_asked(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if print_short_help_if_asked(argv):
        return 0
    from hf_peft_suite.cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
