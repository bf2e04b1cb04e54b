"""The figures: best accuracy against trainable parameters, and learning curves (accuracy and loss per epoch).

- A run writes ``learning_curves.png`` beside its ``results.json`` (:func:`write_run_figure`);
- ``--method all`` and ``hf-peft-suite report`` write ``comparison.png`` (accuracy against trainable parameters) and
  ``learning_curves.png`` (one line per cell) beside ``comparison.md`` (:func:`write_comparison_figures`).

The training-loss panel draws every logged training loss (``results.json``'s ``log_history``): one point per step
with ``--logging_strategy steps``, one per epoch by default. Each method has one colour; a scratch implementation is drawn with filled circles and a thin solid line, its library
twin with larger hollow squares and a wide dashed line, so the two stay distinguishable where their values are equal.
Cells repeated over several seeds are drawn at their mean with error bars of one standard deviation. Cells that were
skipped or failed are listed under the plot.

matplotlib is a dependency of the package; where it cannot be imported anyway, the run writes its tables and says in
one line why there is no figure. Figures are drawn with matplotlib's object API (no ``pyplot``), so a notebook's
backend is left alone.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

PARAMETERS_FIGURE_NAME = "comparison.png"
CURVES_FIGURE_NAME = "learning_curves.png"
PANELS = (("eval_accuracy", "validation accuracy"), ("train_loss", "training loss"), ("eval_loss", "validation loss"))
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
# The order of the methods in the table, and their colours in the figures (methods not named here come after them).
METHOD_ORDER = ("full", "prompt_tuning", "prefix_tuning", "adapter", "lora", "ia3")
NOTE_CHARACTERS_PER_INCH = 15  # monospace at 7.5 points


@dataclass
class Curve:
    """One cell's per-epoch values (the mean over seeds) and their standard deviations (``None``: one seed);
    ``x`` gives a panel its own epochs where they are not ``epochs`` (the per-step training loss)."""

    label: str
    method: str
    implementation: str
    epochs: list[float]
    values: dict[str, list[float]]
    errors: dict[str, list[float] | None] = field(default_factory=dict)
    x: dict[str, list[float]] = field(default_factory=dict)


def figures_problem() -> str | None:
    """Why no figure can be drawn here (matplotlib cannot be imported), as one line with the fix; ``None`` if it can."""
    try:
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as error:
        return (f"no figures: matplotlib cannot be imported ({type(error).__name__}: {error}); install it with: "
                f"pip install matplotlib")
    return None


def curve_from_runs(label: str, method: str, implementation: str, runs: list[dict]) -> Curve:
    """A :class:`Curve` from each seed's ``results.json`` (the epochs all of them evaluated): the ``history`` rows,
    and every training loss of ``log_history`` where it logged more of them than there are evaluations."""
    by_epoch = [{round(row["epoch"], 4): row for row in run["history"]} for run in runs]
    epochs = sorted(set.intersection(*(set(rows) for rows in by_epoch))) if by_epoch else []
    values, errors, x = {}, {}, {}
    for key, _ in PANELS:
        spread = [mean_and_std([rows[epoch].get(key) for rows in by_epoch]) for epoch in epochs]
        values[key] = [math.nan if mean is None else mean for mean, _ in spread]
        errors[key] = [std or 0.0 for _, std in spread] if len(runs) > 1 else None
    logged = [logged_training_losses(run) for run in runs]
    if all(len(losses) > len(run["history"]) for losses, run in zip(logged, runs)):
        steps = sorted(set.intersection(*(set(losses) for losses in logged)))
        spread = [mean_and_std([losses[epoch] for losses in logged]) for epoch in steps]
        x["train_loss"], values["train_loss"] = steps, [mean for mean, _ in spread]
        errors["train_loss"] = [std or 0.0 for _, std in spread] if len(runs) > 1 else None
    return Curve(label, method, implementation, epochs, values, errors, x)


def logged_training_losses(results: dict) -> dict[float, float]:
    """epoch -> the training loss Trainer logged then, from ``results.json``'s ``log_history`` (empty for runs
    written before it was kept)."""
    return {round(entry["epoch"], 4): entry["loss"] for entry in results.get("log_history") or []
            if "loss" in entry and "epoch" in entry}


def mean_and_std(values: list) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation (n - 1) of the values that are not ``None`` (std: ``None`` for
    fewer than two)."""
    values = [value for value in values if value is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))


# -------------------------------------------------------------------------------------------------- styles
def _colors(keys: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
    """One colour per method, the same in every figure (a run's own and the comparison's); every (method,
    implementation, run) its own colour where a cell appears twice."""
    pairs = [(method, implementation) for method, implementation, _ in keys]
    if len(set(pairs)) < len(pairs):
        return {key: COLORS[index % len(COLORS)] for index, key in enumerate(keys)}
    others = sorted({method for method, _, _ in keys} - set(METHOD_ORDER))
    order = [*METHOD_ORDER, *others]
    return {key: COLORS[order.index(key[0]) % len(COLORS)] for key in keys}


def _marker(implementation: str, color: str) -> dict:
    if implementation == "library":
        return {"marker": "s", "markersize": 9, "markerfacecolor": "none", "markeredgecolor": color,
                "markeredgewidth": 1.6}
    return {"marker": "o", "markersize": 5, "markerfacecolor": color, "markeredgecolor": color}


def _line(implementation: str) -> dict:
    if implementation == "library":
        return {"linestyle": (0, (4, 2.5)), "linewidth": 3.2, "alpha": 0.55, "zorder": 2}
    return {"linestyle": "-", "linewidth": 1.4, "alpha": 1.0, "zorder": 3}


def _notes_text(notes: list[str], width: float) -> str:
    lines = []
    for note in notes:
        lines += textwrap.wrap(note, int(width * NOTE_CHARACTERS_PER_INCH), subsequent_indent="    ") or [""]
    return "\n".join(lines)


def _finish(figure, notes: list[str], legend_rows: int, path: Path, width: float, axes_height: float):
    """Size the figure for its axes, legend and notes (in inches), place them, and save it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    text = _notes_text([f"not shown: {note}" for note in notes], width)
    note_lines = text.count("\n") + 1 if text else 0
    legend_height = 0.2 * legend_rows + 0.12
    bottom = 0.55 + legend_height + 0.17 * note_lines
    height = axes_height + bottom + 0.67
    figure.set_size_inches(width, height)
    figure.subplots_adjust(left=0.07 if width > 10 else 0.1, right=0.98, top=1 - 0.62 / height, bottom=bottom / height,
                           wspace=0.28)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, (bottom - 0.5) / height),
                      ncol=min(4, len(handles)), fontsize=8, frameon=False)
    if text:
        figure.text(0.01, 0.08 / height, text, fontsize=7.5, color="#444444", va="bottom", ha="left",
                    family="monospace")
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)
    return figure


# -------------------------------------------------------------------------------------------------- figures
def plot_learning_curves(curves: list[Curve], path: Path, title: str, notes: list[str] = ()):
    """Validation accuracy, training loss and validation loss per epoch, one line per cell (see the module docstring),
    saved to ``path``; returns the matplotlib ``Figure``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure()
    axes = figure.subplots(1, len(PANELS), sharex=True)  # one epoch axis, epoch 0 included
    colors = _colors([(curve.method, curve.implementation, curve.label) for curve in curves])
    for curve in curves:
        color = colors[(curve.method, curve.implementation, curve.label)]
        for ax, (key, _) in zip(axes, PANELS):
            errors, epochs = curve.errors.get(key), curve.x.get(key, curve.epochs)
            dense = {"markevery": max(1, len(epochs) // 12)} if len(epochs) > 24 else {}  # per-step losses
            ax.errorbar(epochs, curve.values[key], yerr=errors, color=color, capsize=3 if errors else 0,
                        label=curve.label, **_line(curve.implementation), **_marker(curve.implementation, color),
                        **dense)
    whole_epochs = all(float(epoch).is_integer() for curve in curves for epochs in (curve.epochs, *curve.x.values())
                       for epoch in epochs)
    for ax, (key, name) in zip(axes, PANELS):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        if whole_epochs:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if key.endswith("loss") and _spans_decades(curves, key):
            ax.set_yscale("log")
    axes[0].set_ylim(-0.02, 1.02)
    figure.suptitle(title, fontsize=11)
    return _finish(figure, list(notes), math.ceil(len(curves) / 4), Path(path), width=13.5, axes_height=3.4)


def _spans_decades(curves: list[Curve], key: str) -> bool:
    values = [value for curve in curves for value in curve.values[key] if value > 0 and not math.isnan(value)]
    return bool(values) and max(values) / min(values) > 20


def plot_accuracy_vs_parameters(rows: list[dict], path: Path, title: str, notes: list[str] = ()):
    """Best accuracy against trainable parameters (log x), one marker per cell, error bars where several seeds ran,
    saved to ``path``; returns the matplotlib ``Figure``."""
    from matplotlib.figure import Figure

    figure = Figure()
    ax = figure.subplots()
    colors = _colors([(row["method"], row["implementation"], row["label"]) for row in rows])
    for row in rows:
        color = colors[(row["method"], row["implementation"], row["label"])]
        ax.errorbar([row["trainable_parameters"]], [row["best_accuracy"]], yerr=row.get("best_accuracy_std"),
                    color=color, capsize=4, linestyle="none", label=row["label"],
                    zorder=3 if row["implementation"] == "scratch" else 2, **_marker(row["implementation"], color))
    placed: dict[str, tuple[float, float]] = {}
    for row in rows:  # the method's name once, beside its first marker (twins share the same x)
        x, y = math.log10(row["trainable_parameters"]), row["best_accuracy"]
        if row["method"] in placed:
            continue
        crowded = any(abs(x - other_x) < 0.5 and abs(y - other_y) < 0.06 for other_x, other_y in placed.values())
        placed[row["method"]] = (x, y)
        ax.annotate(row["method"], (row["trainable_parameters"], y), textcoords="offset points",
                    xytext=(9, -15 if crowded else 7), fontsize=9,
                    color=colors[(row["method"], row["implementation"], row["label"])])
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("best accuracy (generated label words)")
    if rows:
        low = min(row["best_accuracy"] - (row.get("best_accuracy_std") or 0) for row in rows)
        ax.set_ylim(max(-0.02, math.floor(low * 20) / 20 - 0.05), 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return _finish(figure, list(notes), math.ceil(len(rows) / 4), Path(path), width=8.5, axes_height=4.0)


def model_title(results: dict, what: str, seeds: int = 1) -> str:
    """``t5-small: what`` (``(random init)`` where the base was random; ``mean ± std over N seeds`` where repeated)."""
    title = f"{results.get('model_name_or_path')}{' (random init)' if results.get('random_init') else ''}: {what}"
    return title + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else "")


def write_run_figure(results: dict, output_dir: Path) -> str:
    """Draw one run's learning curves into ``output_dir/learning_curves.png``; returns the line that says so, or why
    there is no figure."""
    problem = figures_problem()
    if problem:
        return problem
    label = f"{results['method']}/{results['implementation']}"
    curve = curve_from_runs(label, results["method"], results["implementation"], [results])
    path = Path(output_dir) / CURVES_FIGURE_NAME
    plot_learning_curves([curve], path, model_title(results, "learning curves"))
    return f"learning curves: {path}"
