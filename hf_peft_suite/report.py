"""The comparison table (Markdown, CSV, JSON) and its figures, from finished runs.

Built from each run's ``results.json`` (and the ``error.json`` of each failed or skipped cell), so
``hf-peft-suite report DIR ...`` can rebuild it at any time from finished runs. A cell is a run folder
(``<method>-<implementation>/`` in a comparison), or a folder whose ``seed-<N>/`` subfolders hold one run per seed
(``--seeds``): its row gives the mean and the sample standard deviation over the seeds. Each row names its run (the
folder, relative to the DIR it was found in, prefixed with that DIR's name when several are given), so two runs of the
same cell are told apart. The figures are drawn by :mod:`hf_peft_suite.plots`.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .compat import start_command
from .errors import UsageError
from .files import ERROR_NAME, RESULTS_NAME
from .plots import (
    CURVES_FIGURE_NAME,
    PARAMETERS_FIGURE_NAME,
    curve_from_runs,
    figures_problem,
    mean_and_std,
    model_title,
    plot_accuracy_vs_parameters,
    plot_learning_curves,
)
from .plots import METHOD_ORDER as PLOTTED_METHOD_ORDER
from .task import task_text

SEED_FOLDER = re.compile(r"seed-(-?\d+)")
COLUMNS = [
    ("method", "method"),
    ("implementation", "implementation"),
    ("seeds", "seed(s)"),
    ("trainable_parameters", "trainable params"),
    ("trainable_percent", "% of total"),
    ("accuracy_before_training", "before training"),  # shown only where a run evaluated before training
    ("best_accuracy", "best accuracy"),
    ("macro_f1", "macro-F1"),
    ("invalid_rate", "invalid rate"),
    ("world_size", "processes"),
    ("global_train_batch_size", "global batch"),
    ("train_runtime_s", "train time (s)"),
    ("train_samples_per_second", "train samples/s"),
    ("eval_samples_per_second", "eval samples/s"),
    ("peak_memory_mb", "peak memory (MB)"),
    ("artifact_size_bytes", "artifact size"),
    ("status", "status"),
    ("run", "run"),
]
# Averaged over seeds; those in SPREAD_KEYS also get a standard deviation (``<key>_std``), shown as mean ± std.
MEAN_KEYS = ("accuracy_before_training", "best_accuracy", "macro_f1", "invalid_rate", "train_runtime_s",
             "train_samples_per_second", "eval_samples_per_second", "peak_memory_mb")
SPREAD_KEYS = ("accuracy_before_training", "best_accuracy", "macro_f1", "invalid_rate", "train_runtime_s")
METHOD_ORDER = {name: index for index, name in enumerate(PLOTTED_METHOD_ORDER)}  # (one list, in plots.py)
IMPLEMENTATION_ORDER = {"scratch": 0, "library": 1}


@dataclass
class Cell:
    """One row of the table: a run folder, the ``results.json`` of each of its seeds and its ``error.json`` records."""

    folder: Path
    run: str
    results: list[dict] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)

    @property
    def method(self) -> str:
        return (self.results or self.problems)[0]["method"]

    @property
    def implementation(self) -> str:
        return (self.results or self.problems)[0]["implementation"]

    @property
    def label(self) -> str:
        """``method/implementation``, and the run's name where it is not just that (``report`` over several DIRs)."""
        name = f"{self.method}/{self.implementation}"
        return name if self.run == f"{self.method}-{self.implementation}" else f"{name} ({self.run})"


def _seed(results: dict) -> int | None:
    return results.get("config", {}).get("training", {}).get("seed")


# ------------------------------------------------------------------------------- the evaluation before training
def before_training(history: list[dict]) -> dict | None:
    """The history row of the evaluation before the first training step (``--eval_on_start``: epoch 0, step 0)."""
    return next((row for row in history if row.get("step") == 0), None)


def trained_history(history: list[dict]) -> list[dict]:
    """The history rows of the evaluations after training began (the best accuracy is chosen among these)."""
    return [row for row in history if row.get("step") != 0]


def _best(results: dict) -> dict:
    """One run's figures: its best accuracy and the other metrics of that evaluation, the accuracy before training
    (``None`` without ``--eval_on_start``), and its measurements."""
    best = max(trained_history(results["history"]), key=lambda row: row["eval_accuracy"])
    start = before_training(results["history"])
    return {
        "seed": _seed(results),
        "accuracy_before_training": start["eval_accuracy"] if start else None,
        "best_accuracy": results["best_accuracy"],
        "best_epoch": results["best_epoch"],
        "macro_f1": best.get("eval_macro_f1"),
        "invalid_rate": best.get("eval_invalid_rate"),
        "train_runtime_s": results.get("train_runtime_s"),
        "train_samples_per_second": results.get("train_samples_per_second"),
        "eval_samples_per_second": results.get("eval_samples_per_second"),
        "peak_memory_mb": results.get("peak_memory_mb"),
    }


def row_from_cell(cell: Cell) -> dict:
    """The table row of a cell: one run's figures, or the mean (and ``<key>_std``) over its seeds."""
    row = {"run": cell.run, "method": cell.method, "implementation": cell.implementation}
    if not cell.results:
        problem = cell.problems[0]
        row.update({key: None for key, _ in COLUMNS if key not in row})
        row.update(seeds=[], status=problem.get("status", "failed"), error=problem["error"], per_seed=[])
        return row
    first, per_seed = cell.results[0], [_best(results) for results in cell.results]
    row.update(
        seeds=[run["seed"] for run in per_seed],
        trainable_parameters=first["parameters"]["trainable"],
        total_parameters=first["parameters"]["total"],
        trainable_percent=first["parameters"]["trainable_percent"],
        best_epoch=per_seed[0]["best_epoch"] if len(per_seed) == 1 else None,
    )
    for key in MEAN_KEYS:
        row[key], std = mean_and_std([run[key] for run in per_seed])
        if key in SPREAD_KEYS:
            row[f"{key}_std"] = std
    row.update(
        world_size=first.get("world_size"),
        global_train_batch_size=first.get("global_train_batch_size"),  # absent from runs before it was recorded
        peak_memory_kind=first.get("peak_memory_kind"),
        artifact_size_bytes=first.get("artifact_size_bytes"),
        model_name_or_path=first.get("model_name_or_path"),
        input_template=first.get("input_template"),  # None: a run from before templates (it read its text column)
        label_map=first.get("label_map"),
        random_init=first.get("random_init"),
        status="ok" if not cell.problems else f"{len(cell.results)}/{len(cell.results) + len(cell.problems)} seeds",
        error="; ".join(f"seed {p.get('seed')}: {p['error']}" for p in cell.problems) or None,
        per_seed=per_seed,
    )
    return row


def collect_cells(directories: list[str | Path]) -> list[Cell]:
    """Every cell found in ``directories`` (each a run folder, a cell folder of seeds, or a folder of those)."""
    cells: dict[Path, Cell] = {}
    several = len(directories) > 1
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise UsageError(f"{directory} is not a folder; give folders holding results.json files")
        for name in (RESULTS_NAME, ERROR_NAME):
            found = {*directory.glob(name), *directory.glob(f"*/{name}"), *directory.glob(f"*/seed-*/{name}")}
            for path in sorted(found):
                if name == ERROR_NAME and (path.parent / RESULTS_NAME).exists():
                    continue  # an old error of a run that has since finished
                folder = path.parent.parent if SEED_FOLDER.fullmatch(path.parent.name) else path.parent
                key = folder.resolve()
                if key not in cells:
                    cells[key] = Cell(folder, _run_name(folder, directory, several))
                record = json.loads(path.read_text())
                if name == RESULTS_NAME:
                    cells[key].results.append(record)
                elif path.parent == folder and cells[key].results:
                    continue  # the cell-level error of an earlier attempt, now that seeds have finished
                else:
                    cells[key].problems.append({**record, "seed": _seed_of_folder(path.parent)})
    if not any(cell.results for cell in cells.values()):
        raise UsageError(f"no results.json found in {', '.join(map(str, directories))}; run some experiments first")
    for cell in cells.values():
        cell.results.sort(key=lambda results: (_seed(results) is None, _seed(results) or 0))
    return sorted(cells.values(), key=lambda cell: (METHOD_ORDER.get(cell.method, 9), cell.method,
                                                    IMPLEMENTATION_ORDER.get(cell.implementation, 9), cell.run))


def _seed_of_folder(folder: Path) -> int | None:
    match = SEED_FOLDER.fullmatch(folder.name)
    return int(match.group(1)) if match else None


def _run_name(folder: Path, directory: Path, several: bool) -> str:
    """The run's name in the table: its folder relative to ``directory`` (``directory``'s own name where the folder
    is ``directory`` itself or outside it), prefixed with ``directory``'s name when several directories are reported."""
    try:
        relative = folder.resolve().relative_to(directory.resolve()).as_posix()
    except ValueError:
        relative = "."
    if relative == ".":
        return folder.resolve().name
    return f"{directory.resolve().name}/{relative}" if several else relative


# ---------------------------------------------------------------------------------------------------- the table
def _human_size(size: float | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"


def _cell(key: str, value, std=None) -> str:
    if value is None:
        return "-"
    if key == "seeds":
        return ", ".join(map(str, value)) or "-"
    if key == "artifact_size_bytes":
        return _human_size(value)
    if key == "trainable_parameters":
        return f"{value:,}"
    if key == "trainable_percent":
        return f"{value:.4f}" if value < 1 else f"{value:.2f}"
    if key in ("accuracy_before_training", "best_accuracy", "macro_f1", "invalid_rate"):
        return f"{value:.4f}" + (f" ± {std:.4f}" if std is not None else "")
    if isinstance(value, float):
        return f"{value:,.1f}" + (f" ± {std:,.1f}" if std is not None else "")
    return str(value)


def shown_columns(rows: list[dict]) -> list[tuple[str, str]]:
    """The table's columns: "before training" only where a run evaluated before training (``--eval_on_start``)."""
    started = any(row.get("accuracy_before_training") is not None for row in rows)
    return [(key, title) for key, title in COLUMNS if started or key != "accuracy_before_training"]


def markdown_table(rows: list[dict]) -> str:
    columns = shown_columns(rows)
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, row.get(key), row.get(f"{key}_std")) for key, _ in columns) + " |")
    for row in rows:
        if row["error"]:
            lines.append(f"\n{row['method']} / {row['implementation']} {row['status']}: {row['error']}")
    lines += _task_lines(rows)
    if any(len(row["seeds"]) > 1 for row in rows):
        lines.append("\nWith several seeds: the mean ± the sample standard deviation over them (figures of each seed: "
                     "comparison.json, per_seed).")
    return "\n".join(lines) + "\n"


def _task_lines(rows: list[dict]) -> list[str]:
    """What the runs read and wrote (their input template and label map), once if they share it, else per run;
    nothing for runs from before templates, which recorded neither."""
    tasks = [(row["run"], task_text(row.get("input_template"), row.get("label_map"))) for row in rows
             if row.get("input_template")]
    if not tasks:
        return []
    if len({text for _, text in tasks}) == 1:
        return [f"\nTask: {tasks[0][1]}."]
    return ["\nTasks differ between runs:", *[f"- {run}: {text}" for run, text in tasks]]


# --------------------------------------------------------------------------------------------------- writing
def _not_shown(rows: list[dict]) -> list[str]:
    """The cells a figure cannot show (skipped, failed), and seeds that failed in the cells it shows."""
    return [f"{row['method']}/{row['implementation']} ({row['run']}) {row['status']}: {row['error']}"
            for row in rows if row["error"]]


def write_figures(cells: list[Cell], rows: list[dict], output_dir: Path) -> dict[str, Path] | str:
    """``comparison.png`` and ``learning_curves.png`` in ``output_dir``; or the line that says why there are none."""
    problem = figures_problem()
    if problem:
        return problem
    shown = [(cell, row) for cell, row in zip(cells, rows) if cell.results]
    notes, seeds = _not_shown(rows), max(len(cell.results) for cell, _ in shown)
    first = shown[0][0].results[0]
    for cell, row in shown:
        row["label"] = cell.label
    curves = [curve_from_runs(cell.label, cell.method, cell.implementation, cell.results) for cell, _ in shown]
    paths = {"png": output_dir / PARAMETERS_FIGURE_NAME, "curves": output_dir / CURVES_FIGURE_NAME}
    plot_accuracy_vs_parameters([row for _, row in shown], paths["png"],
                                model_title(first, "best accuracy vs trainable parameters", seeds), notes)
    plot_learning_curves(curves, paths["curves"], model_title(first, "learning curves", seeds), notes)
    for _, row in shown:
        del row["label"]
    return paths


def write_report(directories: list[str | Path], output_dir: str | Path | None = None,
                 notices: list[str] | None = None, figures: bool = True) -> dict[str, Path]:
    """Write comparison.{md,csv,json} and, unless ``figures`` is false, the figures (comparison.png,
    learning_curves.png) into ``output_dir`` (default: the first directory); return their paths. Why there are no
    figures, if so, is appended to ``notices``."""
    start_command(needed_for=())
    cells = collect_cells(directories)
    rows = [row_from_cell(cell) for cell in cells]
    output_dir = Path(output_dir or directories[0])
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: output_dir / f"comparison.{kind}" for kind in ("md", "csv", "json")}
    paths["md"].write_text(markdown_table(rows))
    paths["json"].write_text(json.dumps(rows, indent=2) + "\n")
    with paths["csv"].open("w", newline="") as handle:
        fields = list(dict.fromkeys(key for row in rows for key in row if key != "per_seed"))
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**row, "seeds": " ".join(map(str, row["seeds"]))} for row in rows)
    drawn = write_figures(cells, rows, output_dir) if figures else {}
    if isinstance(drawn, str):
        if notices is not None:
            notices.append(drawn)
    else:
        paths.update(drawn)
    return paths
