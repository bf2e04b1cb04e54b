"""The figures and the report, from results.json files written here: run names, twins, seeds, skipped cells, and what
happens without matplotlib."""

from __future__ import annotations

import json
import math
import sys

import pytest

from hf_peft_suite import plots, report
from hf_peft_suite.cli import main

from .conftest import REPO_ROOT

PNG = b"\x89PNG\r\n\x1a\n"


def write_results(folder, method, implementation, accuracies, seed=0, trainable=12_288, losses=None):
    """A results.json as a run writes it, with the keys the report reads, one history row per epoch."""
    losses = losses or [1.0 / (epoch + 1) for epoch in range(len(accuracies))]
    history = [{"epoch": float(epoch + 1), "step": 10 * (epoch + 1), "train_loss": loss, "eval_loss": loss / 2,
                "eval_accuracy": accuracy, "eval_macro_f1": accuracy, "eval_invalid_rate": 0.0}
               for epoch, (accuracy, loss) in enumerate(zip(accuracies, losses))]
    best = max(history, key=lambda row: row["eval_accuracy"])
    results = {
        "method": method, "implementation": implementation, "model_name_or_path": "builtin:tiny-t5",
        "random_init": True, "history": history, "best_accuracy": best["eval_accuracy"], "best_epoch": best["epoch"],
        "parameters": {"total": 181_504, "trainable": trainable, "trainable_percent": 100 * trainable / 181_504},
        "train_runtime_s": 4.0 + seed, "train_samples_per_second": 100.0, "eval_samples_per_second": 200.0,
        "peak_memory_mb": 500.0, "artifact_size_bytes": 50_000, "config": {"training": {"seed": seed}},
    }
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    return results


def write_error(folder, method, implementation, status, message):
    folder.mkdir(parents=True)
    (folder / "error.json").write_text(json.dumps({"method": method, "implementation": implementation,
                                                   "status": status, "error": message}))


def lines(ax) -> dict:
    """The data line of each labelled cell (each cell is drawn as an errorbar container)."""
    return {container.get_label(): container.lines[0] for container in ax.containers}


@pytest.fixture
def drawn(monkeypatch):
    """The figures write_report draws, by name."""
    figures = {}

    def keep(function, name):
        def wrapper(*args, **kwargs):
            figures[name] = function(*args, **kwargs)
            return figures[name]
        return wrapper

    monkeypatch.setattr(report, "plot_learning_curves", keep(plots.plot_learning_curves, "curves"))
    monkeypatch.setattr(report, "plot_accuracy_vs_parameters", keep(plots.plot_accuracy_vs_parameters, "parameters"))
    return figures


def test_report_names_each_run_so_two_runs_of_a_cell_are_told_apart(tmp_path, drawn, capsys):
    for run, accuracy in (("first", 0.9), ("second", 0.8)):
        write_results(tmp_path / run / "lora-scratch", "lora", "scratch", [0.5, accuracy])
    assert main(["report", str(tmp_path / "first"), str(tmp_path / "second"), "--output_dir", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "comparison.json").read_text())
    assert [(row["run"], row["best_accuracy"]) for row in rows] == [("first/lora-scratch", 0.9),
                                                                     ("second/lora-scratch", 0.8)]
    table = (tmp_path / "comparison.md").read_text()
    assert "| run |" in table.splitlines()[0] and "first/lora-scratch |" in table and "second/lora-scratch |" in table
    labels = drawn["curves"].axes[0].get_legend_handles_labels()[1]
    assert labels == ["lora/scratch (first/lora-scratch)", "lora/scratch (second/lora-scratch)"]
    first, second = (lines(drawn["curves"].axes[0])[label] for label in labels)
    assert first.get_color() != second.get_color()  # the same cell twice: a colour each
    assert (tmp_path / "learning_curves.png").read_bytes()[:8] == PNG


def test_twins_stay_distinguishable_where_their_values_are_equal(tmp_path, drawn):
    for implementation in ("scratch", "library"):
        write_results(tmp_path / f"lora-{implementation}", "lora", implementation, [0.6, 0.9])
    report.write_report([tmp_path])
    for figure in drawn.values():
        ax = figure.axes[0]
        scratch, library = lines(ax)["lora/scratch"], lines(ax)["lora/library"]
        assert (scratch.get_marker(), library.get_marker()) == ("o", "s")
        assert library.get_markerfacecolor() == "none" and library.get_markersize() > scratch.get_markersize()
        if figure is drawn["curves"]:
            assert list(scratch.get_ydata()) == list(library.get_ydata()) == [0.6, 0.9]
            assert scratch.get_linestyle() != library.get_linestyle()
            assert library.get_linewidth() > scratch.get_linewidth()


def test_skipped_and_failed_cells_are_listed_on_both_figures(tmp_path, drawn):
    write_results(tmp_path / "lora-scratch", "lora", "scratch", [0.6, 0.9])
    write_error(tmp_path / "adapter-library", "adapter", "library", "skipped", "needs the 'adapters' package")
    write_error(tmp_path / "lora-library", "lora", "library", "failed", "RuntimeError: boom")
    report.write_report([tmp_path])
    for figure in drawn.values():
        text = "\n".join(item.get_text() for item in figure.texts)
        assert "not shown: adapter/library (adapter-library) skipped: needs the 'adapters' package" in text
        assert "not shown: lora/library (lora-library) failed: RuntimeError: boom" in text
        assert figure.axes[0].get_legend_handles_labels()[1] == ["lora/scratch"]


def test_seeds_give_mean_and_std_in_the_tables_and_error_bars_in_both_figures(tmp_path, drawn):
    accuracies = {1: [0.5, 0.8], 2: [0.6, 0.9], 3: [0.7, 0.7]}
    for seed, values in accuracies.items():
        write_results(tmp_path / "lora-scratch" / f"seed-{seed}", "lora", "scratch", values, seed=seed)
    write_results(tmp_path / "full-scratch", "full", "scratch", [0.9, 0.95], trainable=181_504)  # one seed, as before
    report.write_report([tmp_path])
    rows = {row["run"]: row for row in json.loads((tmp_path / "comparison.json").read_text())}
    lora = rows["lora-scratch"]
    best = [max(values) for values in accuracies.values()]  # 0.8, 0.9, 0.7
    assert lora["seeds"] == [1, 2, 3] and lora["best_accuracy"] == pytest.approx(0.8)
    assert lora["best_accuracy_std"] == pytest.approx(math.sqrt(sum((b - 0.8) ** 2 for b in best) / 2))
    assert lora["train_runtime_s"] == pytest.approx(6.0) and lora["train_runtime_s_std"] == pytest.approx(1.0)
    assert [run["best_accuracy"] for run in lora["per_seed"]] == best
    assert rows["full-scratch"]["seeds"] == [0] and rows["full-scratch"]["best_accuracy_std"] is None
    table = (tmp_path / "comparison.md").read_text()
    assert "| 0.8000 ± 0.1000 |" in table and "| 6.0 ± 1.0 |" in table and "| 1, 2, 3 |" in table
    assert "lora-scratch,lora,scratch,1 2 3," in (tmp_path / "comparison.csv").read_text()
    bars = [container for container in drawn["parameters"].axes[0].containers if container.has_yerr]
    assert len(bars) == 1  # lora's; full ran once
    curves = [c for c in drawn["curves"].axes[0].containers if c.has_yerr and c.get_label() == "lora/scratch"]
    assert len(curves) == 1
    assert drawn["curves"].get_suptitle().endswith("(mean ± std over 3 seeds)")


def test_without_matplotlib_a_run_and_the_report_say_why_there_is_no_figure(tmp_path, monkeypatch, capsys):
    results = write_results(tmp_path / "lora-scratch", "lora", "scratch", [0.6, 0.9])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    line = plots.write_run_figure(results, tmp_path / "lora-scratch")
    assert line.startswith("no figures: matplotlib cannot be imported") and "pip install matplotlib" in line
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no figures: matplotlib cannot be imported" in out
    assert not (tmp_path / "comparison.png").exists() and (tmp_path / "comparison.md").exists()


def test_matplotlib_is_a_dependency_of_a_plain_install():
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    assert "matplotlib" in config["options"]["install_requires"]


def test_a_method_has_the_same_colour_in_a_runs_figure_and_in_the_comparison(tmp_path, drawn):
    results = write_results(tmp_path / "lora-scratch", "lora", "scratch", [0.6, 0.9])
    write_results(tmp_path / "full-scratch", "full", "scratch", [0.9, 0.95], trainable=181_504)
    report.write_report([tmp_path])
    curve = plots.curve_from_runs("lora/scratch", "lora", "scratch", [results])
    alone = plots.plot_learning_curves([curve], tmp_path / "alone.png", "lora alone")
    assert lines(alone.axes[0])["lora/scratch"].get_color() == lines(drawn["curves"].axes[0])["lora/scratch"].get_color()


@pytest.mark.slow  # (trains two tiny cells)
def test_no_figures_writes_the_tables_and_results_and_report_draws_the_figures_later(tmp_path, capsys):
    """``--no_figures`` (``figures=False`` from Python): every table and results.json, no PNG and no figure line;
    ``hf-peft-suite report`` on the folder draws the comparison's two figures afterwards."""
    output_dir = tmp_path / "compare"
    assert main(["--preset", "tiny", "--method", "all", "--implementation", "scratch", "--max_steps", "2",
                 "--max_train_samples", "32", "--max_eval_samples", "8", "--no_figures",
                 "--output_dir", str(output_dir)]) == 0
    out = capsys.readouterr().out
    assert "learning curves:" not in out and ".png" not in out
    assert sorted(path.name for path in output_dir.glob("comparison.*")) == ["comparison.csv", "comparison.json",
                                                                             "comparison.md"]
    runs = sorted(path.parent for path in output_dir.glob("*/results.json"))
    assert len(runs) >= 2 and not list(output_dir.rglob("*.png"))
    assert all(json.loads((run / "results.json").read_text())["config"]["experiment"]["figures"] is False
               for run in runs)
    assert main(["report", str(output_dir)]) == 0
    assert (output_dir / "comparison.png").read_bytes()[:8] == PNG
    assert (output_dir / "learning_curves.png").read_bytes()[:8] == PNG
