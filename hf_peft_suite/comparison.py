"""``--method all``: every installed method x implementation, one output folder, one comparison table.

Each cell runs with its method's recommended settings (``METHOD.recommended`` in ``hf_peft_suite/methods/<method>.py``,
with where its values come from), then the preset, the JSON file and the flags on top, into
``OUTPUT_DIR/<method>-<implementation>/``; with ``--seeds 42 43 44``, once per seed into
``OUTPUT_DIR/<method>-<implementation>/seed-<N>/`` (the table then gives the mean ± std over the seeds).
``--implementation scratch|library`` runs only that implementation's cells. A cell that fails is recorded in its
folder's ``error.json`` and does not stop the others; under several processes (``torchrun``, ``accelerate launch``) a
cell that fails on one process only (out of memory, a bug) stops the comparison on every process with one line each,
since the others wait for it in a collective (:func:`_stop_every_process`). Running the same command again skips
finished runs (those with a ``results.json``) and redoes failed or missing ones. As it goes it prints ``cell k/N:
method/implementation`` with the elapsed time and an estimate of what is left; at the end
``comparison.{md,csv,json}``, ``comparison.png`` and ``learning_curves.png`` are written (:mod:`hf_peft_suite.report`;
not the figures with ``--no_figures``) and the total time is printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

from .arguments import Sources, collect_sources, parse_sources
from .compat import start_command
from .errors import ProcessesStopped, UsageError, is_main_process
from .files import ERROR_NAME, RESULTS_NAME
from .launch import check_launch, launched_world_size
from .methods import IMPLEMENTATIONS, METHODS, get_method, library_problem
from .progress import CellCounter
from .report import write_report
from .run_folder import timestamp
from .weights import first_line


def recommended_settings(method: str) -> dict:
    """The recommended settings for ``method``: argument name -> value (their source: ``METHOD.recommended.source``)."""
    return dict(get_method(method).recommended.settings)


def comparison_cells(implementation: str | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """(cells to run, cells skipped with the reason): every method's scratch and, where installed, library form;
    only those of ``implementation`` when it is given."""
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise UsageError(f"unknown implementation {implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    cells, skipped = [], []
    for name, method in METHODS.items():
        if implementation in (None, "scratch"):
            cells.append((name, "scratch"))
        if method.build_library is None or implementation == "scratch":
            continue
        problem = library_problem(method)
        if problem:
            skipped.append((name, "library", problem))
        else:
            cells.append((name, "library"))
    return cells, skipped


def _without_seeds(sources: Sources) -> Sources:
    """``sources`` without ``--seeds``: each cell is one run, with ``--seed`` set to one of them."""
    def drop(layer: dict) -> dict:
        return {key: value for key, value in layer.items() if key != "seeds"}

    return dataclasses.replace(sources, flags=drop(sources.flags), keywords=drop(sources.keywords),
                               config=drop(sources.config), preset=drop(sources.preset))


def run_comparison(argv: list[str]) -> Path:
    """Run every cell (see the module docstring); returns the output folder holding the comparison files."""
    from .experiment import run_parsed_experiment

    start_command()
    sources = collect_sources(argv)
    output_dir = Path(sources.setting("output_dir") or f"outputs/compare-{timestamp()}")
    seeds = sources.setting("seeds")
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {' '.join(map(str, seeds))} repeats a seed; give each seed once")
    implementation = sources.setting("implementation")
    cells, skipped = comparison_cells(implementation)
    sources, main = _without_seeds(sources), is_main_process()
    _check_launch_once(sources, cells)
    if implementation is not None and main:
        print(f"--implementation {implementation}: only its cells run ({', '.join(m for m, _ in cells)})")
    for method, implementation, reason in skipped:
        if main:
            print(f"skipping {method} / {implementation}: {reason}")
            _record_problem(output_dir / f"{method}-{implementation}", method, implementation, reason, "skipped")
    runs = [(method, implementation, seed) for method, implementation in cells for seed in (seeds or [None])]
    counter = CellCounter(len(runs), enabled=main)
    for method, implementation, seed in runs:
        run_dir = output_dir / f"{method}-{implementation}"
        run_dir = run_dir if seed is None else run_dir / f"seed-{seed}"
        label = f"{method}/{implementation}" + ("" if seed is None else f" seed {seed}")
        if (run_dir / RESULTS_NAME).is_file():
            counter.finished_earlier(label, run_dir / RESULTS_NAME)
            continue
        if run_dir.exists():  # a failed or interrupted attempt of ours: start the run again
            shutil.rmtree(run_dir, ignore_errors=True)
        counter.start(label, run_dir)
        keywords = {"method": method, "implementation": implementation, "output_dir": str(run_dir)}
        if seed is not None:
            keywords["seed"] = seed
        try:
            parsed = parse_sources(sources, base_settings=recommended_settings(method), **keywords)
            run_parsed_experiment(parsed)
            counter.done(ok=True)
        except Exception as error:  # the comparison's boundary: one failing cell must not stop the others
            counter.done(ok=False)
            if not isinstance(error, UsageError) and launched_world_size() > 1:
                _stop_every_process(run_dir, method, implementation, label, error)
            if isinstance(error, UsageError):
                message = str(error)
            else:  # a bug, not the user's input: show where it happened
                message = f"{type(error).__name__}: {error}"
                traceback.print_exc(file=sys.stderr)
            print(f"{label} FAILED: {message}")
            _record_problem(run_dir, method, implementation, message, "failed", traceback.format_exc())
    if not main:  # process 0 writes the comparison
        return output_dir
    notices: list[str] = []
    paths = write_report([output_dir], notices=notices, figures=sources.setting("figures") is not False)
    print("\n" + paths["md"].read_text())
    print(counter.summary([f"{method}/{implementation}" for method, implementation, _ in skipped]))
    for line in notices:
        print(line)
    print("comparison written to " + ", ".join(str(path) for path in paths.values()))
    return output_dir


def _check_launch_once(sources: Sources, cells: list[tuple[str, str]]) -> None:
    """Refuse a launch that would not train as one run (several GPUs in one process, ...) once, with one line, rather
    than in every cell; arguments a cell cannot take are left for that cell to report."""
    if not cells:
        return
    method, implementation = cells[0]
    try:
        parsed = parse_sources(sources, base_settings=recommended_settings(method), method=method,
                               implementation=implementation)
    except UsageError:
        return
    check_launch(parsed.training)


def _stop_every_process(run_dir: Path, method: str, implementation: str, label: str, error: Exception):
    """A cell failed on this process only (out of memory, a bug; a usage error stops every process alike): the other
    processes are waiting for this one in a collective and cannot be told to skip the cell, so the comparison stops,
    on every process, with one line each (the launcher ends the ones still waiting). The cell's error.json records the
    failure and its traceback (the first failing process writes it); finished cells are kept."""
    rank, message = int(os.environ.get("RANK", "0")), f"{type(error).__name__}: {first_line(error)}"
    _record_problem(run_dir, method, implementation, f"{message} (process {rank})", "failed", traceback.format_exc(),
                    exclusive=True)
    raise ProcessesStopped(
        f"{label} failed on process {rank} of {launched_world_size()} ({message}); the other processes cannot go on "
        f"without it, so the comparison stops (finished cells are kept, the traceback is in {run_dir / ERROR_NAME}; "
        f"the same command again redoes this cell and the rest)"
    ) from None


def _record_problem(cell_dir: Path, method: str, implementation: str, message: str, status: str, trace: str = "",
                    exclusive: bool = False):
    """Write the cell's error.json; the report lists it, and the next run of the comparison tries the cell again.
    ``exclusive``: keep the record another process has already written."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    record = {"method": method, "implementation": implementation, "status": status, "error": message}
    if trace:
        record["traceback"] = trace
    try:
        with open(cell_dir / ERROR_NAME, "x" if exclusive else "w", encoding="utf-8") as file:
            file.write(json.dumps(record, indent=2) + "\n")
    except FileExistsError:
        pass
