"""The package as a user imports it: what ``import hf_peft_suite`` loads, and what it registers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .helpers import cli_environment


@pytest.mark.slow
def test_import_registers_the_scratch_methods_and_loads_no_library_data_or_trainer_code():
    code = (
        "import sys, hf_peft_suite\n"
        "from transformers import AutoConfig\n"
        "heavy = [m for m in ('peft', 'adapters', 'datasets', 'transformers.trainer', 'evaluate', 'matplotlib')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
        "print(sorted(name for name in ('hf_peft_suite_lora', 'hf_peft_suite_adapter', 'hf_peft_suite_prompt_tuning')"
        " if AutoConfig.for_model(name)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=cli_environment(), capture_output=True, text=True,
                            timeout=120, check=True)
    heavy, registered = result.stdout.strip().splitlines()
    assert heavy == "[]"
    assert registered == "['hf_peft_suite_adapter', 'hf_peft_suite_lora', 'hf_peft_suite_prompt_tuning']"
