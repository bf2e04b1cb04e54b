"""``--method all``: every installed method x implementation, one output folder, one comparison table.

Each cell runs with its method's recommended settings (``hf_peft_suite/presets/recommended/<method>.json``, also
reachable as ``configs/recommended/``; each file says where its values come from), then the preset, the JSON file and
the flags on top, into ``OUTPUT_DIR/<method>-<implementation>/``. A cell that fails is recorded in its folder's
``error.json`` and does not stop the others. Running the same command again skips finished cells (those with a
``results.json``) and redoes failed or missing ones. At the end ``comparison.{md,csv,json,png}`` are written.
"""

from __future__ import annotations

import json
import shutil
import traceback
from datetime import datetime
from importlib import resources
from pathlib import Path

from .arguments import _flag_value, _split_sources, parse_arguments
from .errors import UsageError
from .methods import METHODS, library_problem
from .report import ERROR_NAME, RESULTS_NAME, write_report


def recommended_settings(method: str) -> dict:
    """The recommended settings for ``method`` (empty if the package ships none)."""
    path = resources.files("hf_peft_suite") / "presets" / "recommended" / f"{method}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def comparison_cells() -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """(cells to run, cells skipped with the reason): every method's scratch and, where installed, library form."""
    cells, skipped = [], []
    for name, method in METHODS.items():
        cells.append((name, "scratch"))
        if method.build_library is None:
            continue
        problem = library_problem(method)
        if problem:
            skipped.append((name, "library", problem))
        else:
            cells.append((name, "library"))
    return cells, skipped


def _without_flags(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` less the given flags and their values (``--flag value`` and ``--flag=value``)."""
    kept, skip_next = [], False
    for item in argv:
        if skip_next:
            skip_next = False
            continue
        if item in flags:
            skip_next = True
            continue
        if any(item.startswith(flag + "=") for flag in flags):
            continue
        kept.append(item)
    return kept


def run_comparison(argv: list[str]) -> Path:
    """Run every cell (see the module docstring); returns the output folder holding the comparison files."""
    from .experiment import run_parsed_experiment

    preset, config, flags = _split_sources(argv)
    output_dir = _flag_value(flags, "--output_dir") or config.get("output_dir") or preset.get("output_dir")
    if not output_dir:
        output_dir = f"outputs/compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    output_dir = Path(output_dir)
    cells, skipped = comparison_cells()
    cell_argv = _without_flags(argv, ("--method", "--implementation", "--output_dir"))
    # A JSON file's own method/output_dir keys are overridden by the flags added below.
    for method, implementation, reason in skipped:
        print(f"skipping {method} / {implementation}: {reason}")
        _record_problem(output_dir / f"{method}-{implementation}", method, implementation, reason, "skipped")
    for method, implementation in cells:
        cell_dir = output_dir / f"{method}-{implementation}"
        if (cell_dir / RESULTS_NAME).is_file():
            print(f"{method} / {implementation}: finished earlier, skipped ({cell_dir / RESULTS_NAME})")
            continue
        if cell_dir.exists():  # a failed or interrupted attempt of ours: start the cell again
            shutil.rmtree(cell_dir)
        print(f"\n=== {method} / {implementation} -> {cell_dir}")
        try:
            parsed = parse_arguments(
                [*cell_argv, "--method", method, "--implementation", implementation, "--output_dir", str(cell_dir)],
                base_settings=recommended_settings(method),
            )
            run_parsed_experiment(parsed)
        except Exception as error:  # one failing cell must not stop the others
            message = str(error) if isinstance(error, UsageError) else f"{type(error).__name__}: {error}"
            print(f"{method} / {implementation} FAILED: {message}")
            _record_problem(cell_dir, method, implementation, message, "failed", traceback.format_exc())
    paths = write_report([output_dir])
    print("\n" + paths["md"].read_text())
    print("comparison written to " + ", ".join(str(path) for path in paths.values()))
    return output_dir


def _record_problem(cell_dir: Path, method: str, implementation: str, message: str, status: str, trace: str = ""):
    """Write the cell's error.json; the report lists it, and the next run of the comparison tries the cell again."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    record = {"method": method, "implementation": implementation, "status": status, "error": message}
    if trace:
        record["traceback"] = trace
    (cell_dir / ERROR_NAME).write_text(json.dumps(record, indent=2) + "\n")

