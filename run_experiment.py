#!/usr/bin/env python
"""Fine-tune and evaluate one method: ``python run_experiment.py --preset tiny`` (see README.md)."""

import importlib.util
import os
import sys


def _short_help(argv: list[str]) -> bool:
    """``--help`` without importing torch and transformers (seconds): hf_peft_suite/help.py needs only the standard
    library, so it is loaded by its path, without the package's ``__init__``. Returns whether it printed the help."""
    package = importlib.util.find_spec("hf_peft_suite")
    if package is None or not package.submodule_search_locations:
        return False
    path = os.path.join(list(package.submodule_search_locations)[0], "help.py")
    spec = importlib.util.spec_from_file_location("hf_peft_suite_short_help", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.print_short_help_if_asked(argv)


if __name__ == "__main__":
    if not _short_help(sys.argv[1:]):
        from hf_peft_suite.cli import main

        sys.exit(main())
