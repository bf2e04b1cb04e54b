"""What a run prints while it runs.

- :class:`ConsoleProgress`, a ``TrainerCallback`` that :func:`attach_console` puts in place of Trainer's own printing
  (the raw log dicts of ``PrinterCallback`` / ``ProgressCallback``, which stay in ``results.json`` and reach
  ``--report_to``): on a terminal, a progress bar for training and one for each evaluation; on a terminal or not,
  the per-epoch table, one row as each evaluation (each epoch by default) ends;
- :class:`CellCounter`, for ``--method all``: ``cell k/N: method/implementation`` with the elapsed time and an
  estimate of what is left, and the total at the end.

Only the first process prints; under ``torchrun`` / ``accelerate launch`` the others are silent.
"""

from __future__ import annotations

import sys
import time

from transformers import TrainerCallback


def format_duration(seconds: float) -> str:
    """``0:07``, ``12:03``, ``1:02:03``."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _write(line: str, bars: bool) -> None:
    if bars:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)  # above the bars, which are drawn again below it
    else:
        print(line, flush=True)


def attach_console(trainer, title: str, label: str, verbose: bool, explicit_disable_tqdm: bool) -> "ConsoleProgress":
    """Replace Trainer's printing by a :class:`ConsoleProgress` (bars when stderr is a terminal, unless
    ``--disable_tqdm true`` was given), and keep the libraries quiet on every process (see :mod:`.quiet`)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .quiet import quiet_after_trainer_init

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    bars = sys.stderr.isatty() and not (explicit_disable_tqdm and trainer.args.disable_tqdm)
    console = ConsoleProgress(title, label, bars=bars)
    trainer.add_callback(console)
    quiet_after_trainer_init(trainer, verbose)
    return console


class ConsoleProgress(TrainerCallback):
    """Progress bars (training steps, evaluation batches) on a terminal, and the reference notebook's per-epoch table,
    one row as each evaluation ends (with the evaluation loss, the step and the time since training began)::

        full / scratch on builtin:tiny-t5 (random init)
          epoch  train_loss  valid_acc  macro_f1  invalid  eval_loss      step   time
              1      0.3536     0.9625    0.9625   0.0000     0.0728    63/252   0:02
    """

    COLUMNS = (("train_loss", "train_loss", 10), ("eval_accuracy", "valid_acc", 9), ("eval_macro_f1", "macro_f1", 8),
               ("eval_invalid_rate", "invalid", 7), ("eval_loss", "eval_loss", 9))

    def __init__(self, title: str, label: str, bars: bool = False):
        self.title, self.label, self.bars = title, label, bars
        self.train_bar = self.eval_bar = None
        self.last_loss: float | None = None
        self.started = time.perf_counter()
        self.header_printed = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        if not state.is_world_process_zero:
            return
        print(f"\n{self.title}", flush=True)
        for entry in state.log_history:  # resumed from a checkpoint: the evaluations before it
            self.on_log(args, state, control, logs=entry)
            if "eval_accuracy" in entry:
                self._print_row(entry.get("epoch"), f"{entry.get('step')}/{state.max_steps}", entry, "-")
        if self.bars:
            from tqdm import tqdm

            self.train_bar = tqdm(total=state.max_steps, initial=state.global_step, desc=f"{self.label} training",
                                  unit="step", dynamic_ncols=True, leave=False, file=sys.stderr)

    def on_step_end(self, args, state, control, **kwargs):
        if self.train_bar is not None:
            self.train_bar.update(state.global_step - self.train_bar.n)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not (self.bars and state.is_world_process_zero):
            return
        if self.eval_bar is None:
            from tqdm import tqdm

            total = len(eval_dataloader) if eval_dataloader is not None and hasattr(eval_dataloader, "__len__") else None
            self.eval_bar = tqdm(total=total, desc=f"{self.label} evaluation", unit="batch", dynamic_ncols=True,
                                 leave=False, file=sys.stderr, position=1 if self.train_bar is not None else 0)
        self.eval_bar.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_loss = logs["loss"]
            if self.train_bar is not None:
                self.train_bar.set_postfix(loss=f"{self.last_loss:.4f}", refresh=False)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None
        if state.is_world_process_zero and metrics:
            elapsed = format_duration(time.perf_counter() - self.started)
            self._print_row(state.epoch, f"{state.global_step}/{state.max_steps}", metrics, elapsed)

    def on_train_end(self, args, state, control, **kwargs):
        if self.train_bar is not None:
            self.train_bar.close()
            self.train_bar = None

    def _print_row(self, epoch: float | None, step: str, metrics: dict, elapsed: str) -> None:
        if not self.header_printed:
            self.header_printed = True
            _write(self.header(), self.train_bar is not None)
        _write(self.row(epoch, step, metrics, elapsed), self.train_bar is not None)

    def header(self) -> str:
        return f"{'epoch':>7}" + "".join(f"  {title:>{width}}" for _, title, width in self.COLUMNS) + \
            f"  {'step':>9}  {'time':>6}"

    def row(self, epoch: float | None, step: str, metrics: dict, elapsed: str) -> str:
        values = {**metrics, "train_loss": self.last_loss}
        cells = "".join(f"  {values[key]:>{width}.4f}" if values.get(key) is not None else f"  {'-':>{width}}"
                        for key, _, width in self.COLUMNS)
        return f"{round(epoch or 0.0, 4):>7g}{cells}  {step:>9}  {elapsed:>6}"


class CellCounter:
    """The cell counter of ``--method all``: one line as each cell starts, and the total at the end."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled = total, enabled
        self.index = 0
        self.started = time.perf_counter()
        self.cell_started: float | None = None
        self.durations: list[float] = []
        self.counts = {"trained": 0, "finished earlier": 0, "failed": 0}

    def _print(self, line: str) -> None:
        if self.enabled:
            print(line, flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def start(self, label: str, output_dir) -> None:
        """Cell k of N begins: its name, where it writes, the time so far and (after one cell) what is left."""
        self.index += 1
        self.cell_started = time.perf_counter()
        left = self.total - self.index + 1
        estimate = ""
        if self.durations:
            estimate = f", about {format_duration(sum(self.durations) / len(self.durations) * left)} left"
        self._print(f"\ncell {self.index}/{self.total}: {label} -> {output_dir} "
                    f"({format_duration(self.elapsed())} elapsed{estimate})")

    def finished_earlier(self, label: str, results_path) -> None:
        self.index += 1
        self.counts["finished earlier"] += 1
        self._print(f"cell {self.index}/{self.total}: {label}: finished earlier, skipped ({results_path})")

    def done(self, ok: bool) -> None:
        """The cell that :meth:`start` began has ended (``ok``: trained; otherwise failed)."""
        if self.cell_started is not None:
            self.durations.append(time.perf_counter() - self.cell_started)
            self.cell_started = None
        self.counts["trained" if ok else "failed"] += 1

    def summary(self, skipped: list[str]) -> str:
        counts = ", ".join(f"{number} {what}" for what, number in self.counts.items() if number)
        line = f"{self.total} cells in {format_duration(self.elapsed())} ({counts or 'none run'})"
        return line + (f"; not run: {', '.join(skipped)}" if skipped else "")


def run_label(args) -> str:
    """``method/implementation`` of a run's parsed arguments."""
    return f"{args.experiment.method}/{args.experiment.implementation}"
