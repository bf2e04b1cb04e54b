"""The checks behind ``benchmarks/gpu_smoke.sh``: what each of its commands must have produced, in one line each.

    python benchmarks/gpu_smoke_checks.py gpus                      # how many CUDA devices this process sees
    python benchmarks/gpu_smoke_checks.py cells DIR PROCESSES ENGINE [--refused METHOD REASON]
    python benchmarks/gpu_smoke_checks.py evaluated RUN_DIR EVAL_DIR
    python benchmarks/gpu_smoke_checks.py predicted LOG
    python benchmarks/gpu_smoke_checks.py device-map DIR            # every scratch cell of DIR loaded with device_map
    python benchmarks/gpu_smoke_checks.py run RUN_DIR PROCESSES ENGINE
    python benchmarks/gpu_smoke_checks.py parse COMMANDS_FILE       # --dry-run: every command parses

Each prints its one-line finding and exits 0, or prints what is wrong and exits 1. Heavy imports (torch, transformers)
happen only in the checks that need them.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


class CheckFailed(Exception):
    """What a check found wrong (printed as its one line)."""


def gpus() -> str:
    import torch

    return str(torch.cuda.device_count() if torch.cuda.is_available() else 0)


def _results(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise CheckFailed(f"{path} is missing")
    return json.loads(path.read_text())


def _check_run(results: dict, processes: int, engine: str) -> None:
    where = f"{results['method']}/{results['implementation']}"
    if results.get("world_size") != processes or results.get("engine") != engine:
        raise CheckFailed(f"{where} ran as {results.get('engine')} with {results.get('world_size')} processes, not "
                          f"{engine} with {processes}")
    if results.get("peak_memory_kind") != "cuda_max_memory_allocated":
        raise CheckFailed(f"{where} did not run on the GPU (peak memory measured as {results.get('peak_memory_kind')})")


def run(run_dir: str, processes: str, engine: str) -> str:
    results = _results(Path(run_dir))
    _check_run(results, int(processes), engine)
    return (f"{results['method']}/{results['implementation']}: accuracy {results['best_accuracy']:.4f}, global batch "
            f"{results['global_train_batch_size']}, {results['train_samples_per_second']:.0f} train samples/s, "
            f"eval {results['eval_runtime_s']:.1f} s, peak {results['peak_memory_mb']:.0f} MiB")


def cells(directory: str, processes: str, engine: str, *refused: str) -> str:
    """Every cell of a comparison finished on the GPU as ``engine`` with ``processes`` processes; the cells of the
    methods named after ``--refused`` failed with the reason given, and library cells may be skipped (not installed)."""
    rows = json.loads((Path(directory) / "comparison.json").read_text())
    expected_refusals = dict(zip(refused[1::3], refused[2::3]))  # --refused METHOD REASON ...
    ok, skipped = [], []
    for row in rows:
        label = f"{row['method']}/{row['implementation']}"
        if row["method"] in expected_refusals:
            if expected_refusals[row["method"]] not in (row.get("error") or ""):
                raise CheckFailed(f"{label} should have been refused ({expected_refusals[row['method']]}): "
                                  f"{row['status']} {row.get('error')}")
            continue
        if row["status"] == "skipped":
            skipped.append(label)
            continue
        if row["status"] != "ok":
            raise CheckFailed(f"{label} {row['status']}: {row.get('error')}")
        _check_run(_results(Path(directory) / row["run"]), int(processes), engine)
        ok.append(row["best_accuracy"])
    return (f"{len(ok)} cells ok (best accuracy {min(ok):.2f} to {max(ok):.2f})"
            + (f", skipped: {', '.join(skipped)}" if skipped else "")
            + (f", refused as expected: {', '.join(expected_refusals)}" if expected_refusals else ""))


def evaluated(run_dir: str, eval_dir: str) -> str:
    """``evaluate`` of a finished run reaches the accuracy the run's own last evaluation reached."""
    trained = _results(Path(run_dir))["final_metrics"]
    again = json.loads((Path(eval_dir) / "eval_results.json").read_text())
    if again.get("eval_num_scored") != trained.get("eval_num_scored"):
        raise CheckFailed(f"scored {again.get('eval_num_scored')} examples, the run {trained.get('eval_num_scored')}")
    difference = abs(again["eval_accuracy"] - trained["eval_accuracy"])
    if difference > 0.01:  # bf16 on another batch layout may change a prediction or two, not more
        raise CheckFailed(f"accuracy {again['eval_accuracy']:.4f}, the run's {trained['eval_accuracy']:.4f}")
    return f"accuracy {again['eval_accuracy']:.4f} (the run's: {trained['eval_accuracy']:.4f})"


def predicted(log: str) -> str:
    lines = [line for line in Path(log).read_text().splitlines() if line.strip()]
    words = [line for line in lines if any(word in line for word in ("positive", "negative", "invalid"))]
    if len(words) < 2:
        raise CheckFailed(f"no label word printed for the two texts: {lines[-3:]}")
    return " | ".join(words[-2:])


def device_map(directory: str) -> str:
    """Every scratch artifact loads with ``device_map="cuda"``: all of it on the GPU, the same logits as on the CPU."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import hf_peft_suite  # noqa: F401  (registers the scratch models)

    checked = []
    for model_dir in sorted(Path(directory).glob("*-scratch/model")):
        if not (model_dir.parent / "base_model").is_dir():
            continue  # full fine-tuning: a plain model
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        batch = tokenizer(["a wonderful film", "a dull, tedious film"], return_tensors="pt", padding=True)
        batch["labels"] = tokenizer(["positive", "negative"], return_tensors="pt", padding=True).input_ids
        on_gpu = AutoModelForSeq2SeqLM.from_pretrained(model_dir, device_map="cuda").eval()
        devices = {parameter.device.type for parameter in on_gpu.parameters()}
        if devices != {"cuda"}:
            raise CheckFailed(f"{model_dir}: parameters on {sorted(devices)} with device_map='cuda'")
        on_cpu = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
        with torch.no_grad():
            gpu_logits = on_gpu(**batch.to("cuda")).logits.cpu()
            cpu_logits = on_cpu(**batch.to("cpu")).logits
            on_gpu.generate(**{k: v.to("cuda") for k, v in batch.items() if k != "labels"}, max_new_tokens=2)
        if not torch.allclose(gpu_logits, cpu_logits, atol=1e-3, rtol=1e-3):
            raise CheckFailed(f"{model_dir}: logits on the GPU differ from the CPU's by "
                              f"{(gpu_logits - cpu_logits).abs().max():.2e}")
        checked.append(model_dir.parent.name.removesuffix("-scratch"))
    if not checked:
        raise CheckFailed(f"no scratch delta under {directory}")
    return f"on cuda, logits as on the CPU: {', '.join(checked)}"


# ------------------------------------------------------------------------------------------------ --dry-run
def parse(commands_file: str) -> str:
    """Parse every command of ``commands_file`` (``NAME<TAB>SECONDS<TAB>shell words``: the check, its time limit and
    its command) as its program would, running nothing."""
    failures = 0
    for line in Path(commands_file).read_text().splitlines():
        name, limit, command = line.split("\t", 2)
        try:
            _parse_command(shlex.split(command))
            print(f"DRY  {name:<24} {limit:>4}s  parses: {command.strip()}")
        except (CheckFailed, SystemExit, Exception) as error:  # argparse exits; report it as this line
            failures += 1
            print(f"FAIL {name:<24} {limit:>4}s  does not parse ({type(error).__name__}: {error}): {command.strip()}")
    if failures:
        raise CheckFailed(f"{failures} command(s) do not parse")
    return "every command parses"


def _parse_command(words: list[str]) -> None:
    if words[:1] == ["timeout"]:
        words = words[2:]
    if len(words) > 2 and words[1] == "-m" and words[2] == "torch.distributed.run":
        from torch.distributed.run import get_args_parser

        launched = get_args_parser().parse_args(words[3:])
        return _parse_command([words[0], launched.training_script, *launched.training_script_args])
    if len(words) > 2 and words[1] == "-m" and words[2] == "accelerate.commands.launch":
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser

        launched = launch_command_parser().parse_args(words[3:])
        validated = _validate_launch_command(launched)  # reads the config file
        launched = validated[0] if isinstance(validated, tuple) else launched
        return _parse_command([words[0], launched.training_script, *launched.training_script_args])
    script, argv = words[1], words[2:]
    if script.endswith("gpu_smoke_checks.py"):
        if argv[0] not in CHECKS:
            raise CheckFailed(f"no check {argv[0]!r}")
        return None
    if not script.endswith("run_experiment.py"):
        raise CheckFailed(f"unknown program {script}")
    if argv[:1] == ["evaluate"]:
        from hf_peft_suite.arguments import parse_flags
        from hf_peft_suite.cli import _evaluation_parser

        parse_flags(argv[2:], _evaluation_parser())
        return None
    if argv[:1] == ["predict"]:
        if len(argv) < 3:
            raise CheckFailed("predict needs a run folder and texts")
        return None
    _parse_run(argv)


def _parse_run(argv: list[str]) -> None:
    from hf_peft_suite.arguments import collect_sources, parse_sources
    from hf_peft_suite.comparison import comparison_cells, recommended_settings
    from hf_peft_suite.errors import UsageError

    sources = collect_sources(argv)
    cells = comparison_cells(sources.setting("implementation"))[0] if sources.method == "all" else [(None, None)]
    for method, implementation in cells:
        keywords = {"method": method, "implementation": implementation} if method else {}
        try:
            parse_sources(sources, base_settings=recommended_settings(method) if method else None, **keywords)
        except UsageError as error:
            if not str(error).startswith("--bf16 on this machine"):  # a CPU without bf16: only the GPU can tell
                raise


CHECKS = {"gpus": gpus, "cells": cells, "evaluated": evaluated, "predicted": predicted, "device-map": device_map,
          "run": run, "parse": parse}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in CHECKS:
        print(__doc__)
        return 2
    try:
        print(CHECKS[argv[0]](*argv[1:]))
    except CheckFailed as error:
        print(error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
