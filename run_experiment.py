#!/usr/bin/env python
"""Fine-tune and evaluate one method: ``python run_experiment.py --preset tiny`` (see README.md)."""

import sys

from hf_peft_suite_cli import main

if __name__ == "__main__":
    sys.exit(main())
