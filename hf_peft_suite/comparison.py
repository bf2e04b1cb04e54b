"""``--method all``: every installed method x implementation, one output folder, one comparison table.

Each cell runs with its method's recommended settings (``METHOD.recommended`` in ``hf_peft_suite/methods/<method>.py``,
with where its values come from), then the preset, the JSON file and the flags on top, into
``OUTPUT_DIR/<method>-<implementation>/``. A cell that fails is recorded in its folder's
``error.json`` and does not stop the others. Running the same command again skips finished cells (those with a
``results.json``) and redoes failed or missing ones. At the end ``comparison.{md,csv,json,png}`` are written.
"""

from __future__ import annotations

import json
import shutil
import sys
import traceback
from datetime import datetime
from pathlib import Path

from .arguments import collect_sources, parse_sources
from .errors import UsageError
from .files import ERROR_NAME, RESULTS_NAME
from .methods import METHODS, get_method, library_problem
from .report import write_report


def recommended_settings(method: str) -> dict:
    """The recommended settings for ``method``: argument name -> value (their source: ``METHOD.recommended.source``)."""
    return dict(get_method(method).recommended.settings)


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


def run_comparison(argv: list[str]) -> Path:
    """Run every cell (see the module docstring); returns the output folder holding the comparison files."""
    from .experiment import run_parsed_experiment

    sources = collect_sources(argv)
    output_dir = Path(sources.setting("output_dir") or f"outputs/compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    cells, skipped = comparison_cells()
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
            parsed = parse_sources(sources, base_settings=recommended_settings(method), method=method,
                                   implementation=implementation, output_dir=str(cell_dir))
            run_parsed_experiment(parsed)
        except Exception as error:  # the comparison's boundary: one failing cell must not stop the others
            if isinstance(error, UsageError):
                message = str(error)
            else:  # a bug, not the user's input: show where it happened
                message = f"{type(error).__name__}: {error}"
                traceback.print_exc(file=sys.stderr)
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

