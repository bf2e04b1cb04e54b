"""The comparison table (Markdown, CSV, JSON) and the accuracy-vs-trainable-parameters plot.

Built from the ``results.json`` of each cell (and the ``error.json`` of each failed one), so
``hf-peft-suite report DIR ...`` can rebuild it at any time from finished runs.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .errors import UsageError
from .files import ERROR_NAME, RESULTS_NAME

COLUMNS = [
    ("method", "method"),
    ("implementation", "implementation"),
    ("trainable_parameters", "trainable params"),
    ("trainable_percent", "% of total"),
    ("best_accuracy", "best accuracy"),
    ("macro_f1", "macro-F1"),
    ("invalid_rate", "invalid rate"),
    ("train_runtime_s", "train time (s)"),
    ("train_samples_per_second", "train samples/s"),
    ("eval_samples_per_second", "eval samples/s"),
    ("peak_memory_mb", "peak memory (MB)"),
    ("artifact_size_bytes", "artifact size"),
    ("status", "status"),
]
METHOD_ORDER = {"full": 0, "prompt_tuning": 1, "prefix_tuning": 2, "adapter": 3, "lora": 4, "ia3": 5}
IMPLEMENTATION_ORDER = {"scratch": 0, "library": 1}


def row_from_results(results: dict) -> dict:
    """One table row from a cell's ``results.json``."""
    best = max(results["history"], key=lambda row: row["eval_accuracy"])
    return {
        "method": results["method"],
        "implementation": results["implementation"],
        "trainable_parameters": results["parameters"]["trainable"],
        "total_parameters": results["parameters"]["total"],
        "trainable_percent": results["parameters"]["trainable_percent"],
        "best_accuracy": results["best_accuracy"],
        "best_epoch": results["best_epoch"],
        "macro_f1": best.get("eval_macro_f1"),
        "invalid_rate": best.get("eval_invalid_rate"),
        "train_runtime_s": results.get("train_runtime_s"),
        "train_samples_per_second": results.get("train_samples_per_second"),
        "eval_samples_per_second": results.get("eval_samples_per_second"),
        "peak_memory_mb": results.get("peak_memory_mb"),
        "peak_memory_kind": results.get("peak_memory_kind"),
        "artifact_size_bytes": results.get("artifact_size_bytes"),
        "model_name_or_path": results.get("model_name_or_path"),
        "random_init": results.get("random_init"),
        "status": "ok",
        "error": None,
    }


def row_from_error(error: dict) -> dict:
    row = {key: None for key, _ in COLUMNS}
    row.update(method=error["method"], implementation=error["implementation"], error=error["error"],
               status=error.get("status", "failed"))
    return row


def collect_rows(directories: list[str | Path]) -> list[dict]:
    """Rows for every cell found in ``directories`` (each a cell folder or a folder of cell folders)."""
    rows = []
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise UsageError(f"{directory} is not a folder; give folders holding results.json files")
        for path in sorted({*directory.glob(RESULTS_NAME), *directory.glob(f"*/{RESULTS_NAME}")}):
            rows.append(row_from_results(json.loads(path.read_text())))
        for path in sorted({*directory.glob(ERROR_NAME), *directory.glob(f"*/{ERROR_NAME}")}):
            if not (path.parent / RESULTS_NAME).exists():
                rows.append(row_from_error(json.loads(path.read_text())))
    if not rows:
        raise UsageError(f"no results.json found in {', '.join(map(str, directories))}; run some experiments first")
    return sorted(rows, key=lambda row: (METHOD_ORDER.get(row["method"], 9), row["method"],
                                         IMPLEMENTATION_ORDER.get(row["implementation"], 9)))


def _human_size(size: float | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "artifact_size_bytes":
        return _human_size(value)
    if key == "trainable_parameters":
        return f"{value:,}"
    if key == "trainable_percent":
        return f"{value:.4f}" if value < 1 else f"{value:.2f}"
    if key in ("best_accuracy", "macro_f1", "invalid_rate"):
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, row.get(key)) for key, _ in COLUMNS) + " |")
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"\n{row['method']} / {row['implementation']} {row['status']}: {row['error']}")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> bool:
    """Accuracy against trainable parameters (log x), one labelled marker per cell. False if matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    done = [row for row in rows if row["status"] == "ok"]
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    markers = {"scratch": "o", "library": "s"}
    colors = {}
    for row in done:  # one colour per method, one marker shape per implementation
        color = colors.setdefault(row["method"], f"C{len(colors)}")
        axes.scatter(row["trainable_parameters"], row["best_accuracy"], marker=markers.get(row["implementation"], "x"),
                     s=70 if row["implementation"] == "scratch" else 40, color=color, alpha=0.8,
                     label=f"{row['method']} / {row['implementation']}")
    for method in colors:  # one label per method: its scratch and library twins sit on the same x
        first = next(row for row in done if row["method"] == method)
        axes.annotate(method, (first["trainable_parameters"], first["best_accuracy"]), textcoords="offset points",
                      xytext=(7, 6), fontsize=9, color=colors[method])
    axes.legend(fontsize=7, loc="lower right")
    axes.set_xscale("log")
    axes.margins(x=0.2)
    axes.set_xlabel("trainable parameters (log scale)")
    axes.set_ylabel("best accuracy (generated label words)")
    if done:
        low = min(row["best_accuracy"] for row in done)
        axes.set_ylim(max(0.0, math.floor(low * 20) / 20 - 0.05), 1.0)
        model = done[0].get("model_name_or_path")
        axes.set_title(f"{model}{' (random init)' if done[0].get('random_init') else ''}: accuracy vs trainable parameters")
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def write_report(directories: list[str | Path], output_dir: str | Path | None = None) -> dict[str, Path]:
    """Write comparison.{md,csv,json,png} into ``output_dir`` (default: the first directory); return their paths."""
    rows = collect_rows(directories)
    output_dir = Path(output_dir or directories[0])
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: output_dir / f"comparison.{kind}" for kind in ("md", "csv", "json", "png")}
    paths["md"].write_text(markdown_table(rows))
    paths["json"].write_text(json.dumps(rows, indent=2) + "\n")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if not plot(rows, paths["png"]):
        del paths["png"]
    return paths
