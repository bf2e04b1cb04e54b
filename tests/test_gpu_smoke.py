"""``benchmarks/gpu_smoke.sh`` where there is no GPU: it refuses in one line, and its dry run parses every command it
would run with the programs' own parsers (torchrun's; accelerate launch's, reading the config file; run_experiment.py's,
cell by cell for ``--method all``). Its checks themselves need a GPU, which this project's machines do not have: the
script has not been run yet (docs/distributed.md says so)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT, requires_no_gpu
from .helpers import cli_environment

pytestmark = pytest.mark.slow  # starts the script (and Python under it)
SCRIPT = ["bash", str(REPO_ROOT / "benchmarks" / "gpu_smoke.sh")]
ONE_GPU_CHECKS = ["cells-bf16", "gradient-checkpointing", "evaluate", "predict", "device-map-cuda", "seed-recipe-epoch"]
CHECKS = [*ONE_GPU_CHECKS, "torchrun-cells", "fsdp2-lora-scratch", "fsdp2-lora-library", "zero3-full"]


def run_script(*options, **environment):
    return subprocess.run([*SCRIPT, *options], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=cli_environment(PYTHON=sys.executable, **environment))


@requires_no_gpu  # with a GPU the script would run its checks
def test_without_a_gpu_the_smoke_script_refuses_in_one_line(tmp_path):
    result = run_script(SMOKE_DIR=str(tmp_path / "smoke"))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "error: no GPU is visible (torch.cuda.device_count() is 0): this smoke test checks the GPU paths; on CPUs run "
        "the tests (python -m pytest -q), or list the checks with --dry-run"]
    assert not (tmp_path / "smoke").exists()


def test_the_dry_run_lists_every_check_and_every_command_parses(gpu_smoke_dry_run):
    """The session's ``gpu_smoke_dry_run``: ``bash benchmarks/gpu_smoke.sh --dry-run`` with ``SMOKE_DIR`` set."""
    result, smoke_dir = gpu_smoke_dry_run
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[1] for line in lines[:-1]] == CHECKS and all(line.startswith("DRY ") for line in lines[:-1])
    # The one-GPU checks' time limits: the script ends within 10 minutes on one GPU whatever happens.
    limits = {line.split()[1]: int(line.split()[2].removesuffix("s")) for line in lines[:-1]}
    assert sum(limits[name] for name in ONE_GPU_CHECKS) <= 570
    assert lines[-1] == "every command parses"
    assert not smoke_dir.exists()


def test_a_command_that_does_not_parse_fails_the_dry_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_smoke_checks", REPO_ROOT / "benchmarks" / "gpu_smoke_checks.py")
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    commands = tmp_path / "commands"
    commands.write_text("typo\t60\tpython run_experiment.py --preset tiny --lora_rank 8\n"
                        "fine\t60\tpython -m torch.distributed.run --nproc_per_node 2 run_experiment.py --preset tiny\n"
                        "config\t60\tpython -m accelerate.commands.launch --config_file missing.yaml "
                        "run_experiment.py\n")
    with pytest.raises(checks.CheckFailed, match="2 command"):
        checks.parse(str(commands))
    typo, fine, config = capsys.readouterr().out.splitlines()
    assert typo.startswith("FAIL typo") and "unrecognized arguments: --lora_rank 8" in typo
    assert fine.startswith("DRY  fine")
    assert config.startswith("FAIL config")
