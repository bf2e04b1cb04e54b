"""Shared fixtures and the suite's skip policy.

No test reaches the network. Expensive work is done once per session and shared; a test that writes into shared
material works on a copy.

Finished runs and real processes, each run once per session; tests that use them must be ``@pytest.mark.slow`` (the
collection stops otherwise). Their commands run in a background thread from the session's first test, one after
another (:class:`Background`), beside the tests that do not need them, and the tests that do are collected last: on two
cores the session then takes about as long as its tests alone. Each fixture waits for its command when a test asks
for it.

- ``main_job``: the README's main job, ``python run_experiment.py --preset tiny --method all``, as a real process
  (about 70 s on a quiet core): ``.result`` (the ``CompletedProcess``, stdout and stderr as text) and ``.output_dir``
  (one folder per installed cell, the comparison files and figures). The learning tests read it.
- ``finished_runs``: ``{(method, implementation): run folder}``, the main job's finished run of every installed cell
  (trained on the whole tiny preset: 2,000 training and 400 evaluation examples, 4 epochs). **Read only**: evaluate,
  predict or load them in place (with ``--output_dir`` elsewhere); copy one with ``copy_run`` before writing into it
  (pushing, resuming, rerunning, deleting files). The session fails at its end if any file under them changed.
- ``copy_run(folder, name=None)``: a private copy of a run folder under the test's ``tmp_path``, to write into.
- ``readme_example``: the README's Python example (:func:`readme_python_example`), as written, in a fresh interpreter
  in a temporary folder (``.result``; ``.output_dir``: the ``outputs/tiny-full`` run it writes, the tiny preset's
  full fine-tuning through the Python API).
- ``torchrun_every_cell``: ``torchrun --nproc_per_node 2 run_experiment.py --preset tiny --method all`` with
  ``helpers.DDP_CELL_ARGS`` (``.result``, ``.output_dir``): every cell trained by two gloo processes.
- ``accelerate_lora_library``: ``accelerate launch`` (two CPU processes) of the peft LoRA cell with the same
  arguments (``.result``, ``.output_dir``).
- ``two_process_evaluations``: ``{"torchrun": ..., "accelerate": ...}``, ``hf-peft-suite evaluate`` of the main job's
  peft LoRA run by two processes under each launcher (``.result``, ``.output_dir``).
- ``fresh_interpreter``: what a fresh ``python`` reports after ``import hf_peft_suite`` (heavy modules loaded, model
  types registered) and after building, training a step, saving, loading and generating with every scratch method
  (whether peft was imported), as a dict.
- One real process for one test each, for what only a process shows (``.result``, ``.output_dir``):
  ``terminal_run`` (the tiny preset on a pseudo-terminal; stdout is its screen), ``transformers_verbosity_info`` (a
  run started with ``TRANSFORMERS_VERBOSITY=info``), ``unknown_method_process`` (``--method qlora``) and
  ``gpu_smoke_dry_run`` (``bash benchmarks/gpu_smoke.sh --dry-run``).

A new fixture of this kind is a :class:`Command` in :func:`background_commands`, its name in :data:`BACKGROUND`, and a
fixture that returns ``background.launched(name)``: an entry in :data:`LAUNCHED_FIXTURES` makes one (a fixture that
waits for commands of other names lists them in :data:`FIXTURE_COMMANDS`). A test that starts a process of its own leaves a core idle while it waits: one whose
process needs nothing from the test belongs here.

Small fixtures: ``tiny_tokenizer`` (session), ``tiny_model`` (fresh per test), ``tiny_base_dir`` (the tiny T5 saved
once), and the ``../shared`` material (``shared_imdb``, ``t5_small_path``, ``t5_small_random``) for tests marked
``@requires_shared``.

``ALL_CELLS`` lists every method x implementation the package has; parametrise with ``cell_param(method,
implementation)``, which marks the AdapterHub cell, rather than with the cells installed here (a missing library must
show as a skip with its reason, not as a cell that silently is not there).

Skips are declared with the marks below, at the test (never raised from a test body or a helper), and each has a
documented reason (README, Development). With ``HF_PEFT_SUITE_REQUIRE_ALL=1`` (set by ``.ci/run``) a skip whose reason
is not one of them, or one whose condition does not hold in this environment, fails the test instead:

- ``requires_shared``: the ``../shared`` material (real IMDB, the t5-small tokenizer) is absent, as in a user's clone;
- ``requires_adapterhub``: the AdapterHub cell, where AdapterHub cannot be used: only in an environment with
  transformers 5 (the latest one), which AdapterHub's pin excludes; ``without_adapterhub``: the tests of what a user
  without AdapterHub sees, where it is installed (the full environment; they run in the latest one);
- ``requires_cpu_bf16``: bf16 on the CPU, on a machine whose CPU has no bfloat16 instructions (or that has a GPU);
  ``requires_no_gpu``: refusals that only a machine without a GPU gives. These depend on the machine, not on the
  code: this project's CI machines (AMD EPYC without AVX-512, no GPU) skip the bf16-on-CPU tests;
- ``outside_newest_probe``: ``.ci/newest`` runs the suite outside the tested versions on purpose.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A private datasets cache: a local folder named "imdb" is cached under the name "imdb", and offline
# `load_dataset("imdb")` would then silently find it instead of failing as the Hub path does here.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf_peft_suite_datasets_")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# One intra-op thread (also for the CLI processes tests start): the tiny models gain nothing from more, and on a
# shared two-core machine OpenMP's spinning threads made each tiny training step 10-50x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after the environment above: the libraries read it when they are imported)

from hf_peft_suite.compat import cpu_bf16_problem, installed_version  # noqa: E402
from hf_peft_suite.methods import IMPLEMENTATIONS, METHODS, library_problem  # noqa: E402

pytest_plugins = ["pytester"]  # test_skips.py runs small sessions with this suite's skip hooks

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
SHARED_IMDB = SHARED / "data" / "imdb"
SHARED_T5_SMALL = SHARED / "models" / "t5-small"
REQUIRE_ALL = "HF_PEFT_SUITE_REQUIRE_ALL"

# Every method x implementation the package has, whether or not its library is installed here: tests parametrised over
# them skip the AdapterHub cell with its mark where it cannot run, instead of silently leaving it out.
ALL_CELLS = [(name, implementation) for name, method in METHODS.items() for implementation in IMPLEMENTATIONS
             if implementation == "scratch" or method.build_library is not None]


# ------------------------------------------------------------------------------------------------- skip policy
class DocumentedSkip(NamedTuple):
    """A reason a test may skip, and whether that reason is true here (only then is the skip accepted)."""

    reason: str
    holds: bool


ADAPTERHUB_PROBLEM = library_problem(METHODS["adapter"])
SKIPS = {
    "shared": DocumentedSkip(
        f"{SHARED} is absent: the real IMDB and t5-small tokenizer that CI keeps beside the checkout, which a user's "
        f"clone does not have", not (SHARED_IMDB.is_dir() and SHARED_T5_SMALL.is_dir())),
    # The AdapterHub cell: `adapters` pins transformers 4.57, so it cannot be installed beside transformers 5 (the
    # latest environment). In the full environment it must run: there this skip fails the suite.
    "adapterhub": DocumentedSkip(
        f"the AdapterHub cell: {ADAPTERHUB_PROBLEM}",
        ADAPTERHUB_PROBLEM is not None and int((installed_version("transformers") or "0").split(".")[0]) >= 5),
    "adapterhub_installed": DocumentedSkip(
        "AdapterHub `adapters` is installed here: what a user without it sees is tested in the latest environment",
        ADAPTERHUB_PROBLEM is None),
    "cpu_bf16": DocumentedSkip(
        "needs a CPU with bfloat16 instructions and no GPU",
        torch.cuda.is_available() or cpu_bf16_problem() is not None),
    "gpu": DocumentedSkip("a machine with a GPU gives no CPU-only refusal", torch.cuda.is_available()),
    # DeepSpeed is no dependency (it needs CUDA to build): its internals are checked only where it is installed; what
    # ZeRO-3 does to parameters is simulated in tests/test_engines.py.
    "deepspeed": DocumentedSkip(
        "DeepSpeed is not installed here (it is not a dependency and needs CUDA to build); the attributes and the "
        "gathering it gives ZeRO-3 parameters are simulated in tests/test_engines.py",
        installed_version("deepspeed") is None),
    "newest_probe": DocumentedSkip(
        ".ci/newest runs the suite with the newest releases, outside the tested window on purpose",
        os.environ.get("HF_PEFT_SUITE_NEWEST_PROBE") == "1"),
}
requires_shared = pytest.mark.skipif(SKIPS["shared"].holds, reason=SKIPS["shared"].reason)
requires_adapterhub = pytest.mark.skipif(ADAPTERHUB_PROBLEM is not None, reason=SKIPS["adapterhub"].reason)
without_adapterhub = pytest.mark.skipif(ADAPTERHUB_PROBLEM is None, reason=SKIPS["adapterhub_installed"].reason)
requires_cpu_bf16 = pytest.mark.skipif(SKIPS["cpu_bf16"].holds, reason=SKIPS["cpu_bf16"].reason)
requires_no_gpu = pytest.mark.skipif(SKIPS["gpu"].holds, reason=SKIPS["gpu"].reason)
outside_newest_probe = pytest.mark.skipif(SKIPS["newest_probe"].holds, reason=SKIPS["newest_probe"].reason)


def cell_param(method: str, implementation: str, id: str | None = None) -> pytest.param:
    """``pytest.param(method, implementation)``, with the AdapterHub cell's mark where it is that cell."""
    marks = [requires_adapterhub] if (method, implementation) == ("adapter", "library") else []
    return pytest.param(method, implementation, id=id or f"{method}-{implementation}", marks=marks)


def undocumented_skip(reason: str) -> str | None:
    """Why a skip for ``reason`` is not acceptable here (``None`` when it is one of :data:`SKIPS` and holds)."""
    for skip in SKIPS.values():
        if reason == skip.reason:
            return None if skip.holds else f"its documented condition does not hold in this environment: {reason}"
    return f"the reason is not one of the documented ones (tests/conftest.py, SKIPS): {reason}"


def _require_all(report) -> None:
    """Under ``HF_PEFT_SUITE_REQUIRE_ALL=1``, turn a skip that is not documented (or whose condition does not hold
    here) into a failure that says why."""
    if not report.skipped or hasattr(report, "wasxfail") or os.environ.get(REQUIRE_ALL) != "1":
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    problem = undocumented_skip(reason.removeprefix("Skipped: "))
    if problem:
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_ALL}=1 and this skipped: {problem}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    _require_all((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    _require_all((yield).get_result())


def pytest_collection_finish(session):
    # Everything imported and collected so far lives until the end: keep it out of the garbage collector's full
    # passes, which accelerate starts after every training run (0.2-0.5 s each in a process this size).
    gc.collect()
    gc.freeze()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    # What a test imports (peft, datasets, matplotlib, dynamo, ...) and what outlives it (module and session fixtures)
    # lives on too: freeze it after each test, or every training run's full pass walks it again. The pass here sees
    # only what the test left (test_trainer_flags.py: 91 full passes took 5.5 s, 1.0 s so; the file 37 s, 31 s).
    yield
    gc.collect()
    gc.freeze()


# --------------------------------------------------------------------------------------- small shared material
def _shared(path: Path) -> Path:
    assert path.exists(), f"{path} is absent: mark the test @requires_shared (tests/conftest.py)"
    return path


@pytest.fixture(scope="session")
def shared_imdb() -> Path:
    """The real IMDB in Hub layout (../shared/data/imdb); tests using it are marked ``@requires_shared``."""
    return _shared(SHARED_IMDB)


@pytest.fixture(scope="session")
def t5_small_path() -> Path:
    """The real t5-small tokenizer and config, no weights (../shared/models/t5-small); ``@requires_shared``."""
    return _shared(SHARED_T5_SMALL)


@pytest.fixture(scope="session")
def t5_small_random(t5_small_path):
    """t5-small's architecture with random weights (60,506,624 parameters), built once per session."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    return AutoModelForSeq2SeqLM.from_config(AutoConfig.from_pretrained(t5_small_path))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from hf_peft_suite.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture
def tiny_model():
    """A fresh tiny T5 (random init, seed 0) for each test."""
    from hf_peft_suite.tiny import build_tiny_model

    return build_tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    """The tiny T5 saved as a normal model folder, so deltas can name it as their base."""
    from hf_peft_suite.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("tiny_base")
    build_tiny_model(seed=0).save_pretrained(path)
    return path


# ------------------------------------------------------------------------------ finished runs, real processes
class Launched(NamedTuple):
    """A command run as a real process: what it printed and the folder it wrote."""

    result: subprocess.CompletedProcess
    output_dir: Path


class Command(NamedTuple):
    """A session fixture's command, as :class:`Background` runs it: ``environment`` is added to the tests' own (never
    changed in place), and with ``terminal`` the command writes to a pseudo-terminal of 120 x 40 characters, whose
    screen is the result's ``stdout``."""

    argv: list[str]
    output_dir: Path
    cwd: Path = REPO_ROOT
    timeout: int = 1200
    environment: dict[str, str] = {}
    terminal: bool = False


def background_commands(folder: Path) -> dict[str, Command]:
    """The commands of the session fixtures that are one real process (or one launch of two), in the order
    :class:`Background` runs them; ``folder`` holds what they write."""
    from .helpers import DDP_CELL_ARGS, TORCHRUN, accelerate_launch

    script = [sys.executable, "run_experiment.py"]
    main_job = folder / "main_job" / "compare"
    two_process_evaluation = ["evaluate", str(main_job / "lora-library"),
                              *[f"--{key}={value}" for key, value in TWO_PROCESS_EVALUATION.items()]]
    return {
        "main_job": Command([*script, *MAIN_JOB, "--output_dir", str(main_job)], main_job),
        "torchrun_every_cell": Command(
            [*TORCHRUN, "run_experiment.py", *MAIN_JOB, *map(str, DDP_CELL_ARGS), "--output_dir",
             str(folder / "torchrun")], folder / "torchrun"),
        "accelerate_lora_library": Command(
            [*accelerate_launch(), "run_experiment.py", "--preset", "tiny", "--method", "lora", "--implementation",
             "library", *map(str, DDP_CELL_ARGS), "--output_dir", str(folder / "accelerate")], folder / "accelerate"),
        # (after main_job, whose run they evaluate)
        "torchrun_evaluation": Command(
            [*TORCHRUN, "run_experiment.py", *two_process_evaluation, "--output_dir", str(folder / "evaluate_torchrun")],
            folder / "evaluate_torchrun"),
        "accelerate_evaluation": Command(
            [*accelerate_launch(), "run_experiment.py", *two_process_evaluation, "--output_dir",
             str(folder / "evaluate_accelerate")], folder / "evaluate_accelerate"),
        "readme_example": Command([sys.executable, "-c", readme_python_example()], folder / "readme" / "outputs"
                                  / "tiny-full", cwd=folder / "readme"),
        "fresh_interpreter": Command([sys.executable, "-c", FRESH_INTERPRETER, *delta_model_types()], folder / "fresh"),
        # One real process each, for what only a process shows; here rather than in their tests, so that the tests'
        # own core is not idle while they run.
        "terminal_run": Command(
            [*script, "--preset", "tiny", "--max_steps", "30", "--eval_strategy", "steps", "--eval_steps", "15",
             "--max_eval_samples", "64", "--output_dir", str(folder / "terminal" / "run")], folder / "terminal" / "run",
            terminal=True),
        "transformers_verbosity_info": Command(
            [*script, "--preset", "tiny", "--max_steps", "2", "--max_train_samples", "64", "--max_eval_samples", "16",
             "--output_dir", str(folder / "verbosity" / "run")], folder / "verbosity" / "run",
            environment={"TRANSFORMERS_VERBOSITY": "info"}),
        "unknown_method_process": Command(
            [*script, "--preset", "tiny", "--method", "qlora", "--output_dir", str(folder / "unknown_method" / "out")],
            folder / "unknown_method" / "out"),
        "gpu_smoke_dry_run": Command(
            ["bash", str(REPO_ROOT / "benchmarks" / "gpu_smoke.sh"), "--dry-run"], folder / "gpu_smoke" / "smoke",
            environment={"PYTHON": sys.executable, "SMOKE_DIR": str(folder / "gpu_smoke" / "smoke")}),
    }


MAIN_JOB = ["--preset", "tiny", "--method", "all"]
# Two processes evaluate 41 of the run's examples in batches of 8: odd, so they get 21 and 20, and the last round of
# batches is padded with repeats that must be dropped.
TWO_PROCESS_EVALUATION = {"max_eval_samples": 41, "per_device_eval_batch_size": 8}
BACKGROUND = ["main_job", "torchrun_every_cell", "accelerate_lora_library", "torchrun_evaluation",
              "accelerate_evaluation", "readme_example", "fresh_interpreter", "terminal_run",
              "transformers_verbosity_info", "unknown_method_process", "gpu_smoke_dry_run"]
# The session fixtures that ask for commands of other names; every other fixture in BACKGROUND asks for its own.
FIXTURE_COMMANDS = {"two_process_evaluations": ["torchrun_evaluation", "accelerate_evaluation"]}


def commands_needed(fixturenames) -> list[str]:
    """The :data:`BACKGROUND` commands that a test with these fixtures (its whole closure) waits for, in lane order."""
    needed = {command for name in fixturenames
              for command in FIXTURE_COMMANDS.get(name, [name] if name in BACKGROUND else [])}
    return [name for name in BACKGROUND if name in needed]


class Background:
    """Runs the session's real processes one after another in a background thread, from the session's first test.

    The tests run one at a time and (OMP_NUM_THREADS=1) on one core; a real process started by a test leaves the
    other core idle while the test waits for it. These commands (the main job alone trains for about 70 s) run
    beside the tests that do not need them instead, and the tests that read them are collected last (in the order
    of :data:`BACKGROUND`), so on two cores the session takes about the time of its tests alone. A fixture whose
    command has not started yet runs it itself, beside the lane's current one; one whose command is running runs the
    lane's next commands until it has finished (the test would only wait: this way both cores work until the end,
    and the lane is best ordered longest first). A command that was not scheduled (not
    foreseen from the collected tests' fixtures) is an error: run late, on demand, it would leave the other core idle
    while the tests wait for it.
    """

    def __init__(self, commands: dict[str, Command], names: list[str]):
        import threading

        self.commands, self.scheduled = commands, names
        self.environment = _process_environment()  # taken now: tests may change os.environ while the thread runs
        self.results: dict[str, subprocess.CompletedProcess | BaseException] = {}
        self.finished = {name: threading.Event() for name in commands}
        self.pending = list(names)  # not started yet, in lane order
        self.lock = threading.Lock()
        self.running: dict[str, subprocess.Popen] = {}  # by command name
        self.stopped = False
        self.thread = threading.Thread(target=self._run_scheduled, name="background commands", daemon=True)
        self.thread.start()

    def _take(self, name: str | None = None) -> str | None:
        """Take ``name`` (or the next command) off :attr:`pending`, to run it; ``None`` if it has started already."""
        with self.lock:
            if name is None:
                return self.pending.pop(0) if self.pending and not self.stopped else None
            if name in self.pending:
                self.pending.remove(name)
                return name
            return None

    def _run_scheduled(self) -> None:
        while (name := self._take()) is not None:
            self._run(name)

    def _run(self, name: str) -> None:
        command = self.commands[name]
        command.cwd.mkdir(parents=True, exist_ok=True)
        environment = {**self.environment, **command.environment}
        try:
            if command.terminal:
                self.results[name] = self._run_on_a_terminal(name, environment)
            else:
                process = self._start(name, cwd=command.cwd, env=environment, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
                stdout, stderr = process.communicate(timeout=command.timeout)
                self.results[name] = subprocess.CompletedProcess(command.argv, process.returncode, stdout, stderr)
        except BaseException as error:  # (a timeout) the fixture re-raises it in the test that asked
            self._kill(name)
            self.results[name] = error
        finally:
            with self.lock:
                self.running.pop(name, None)
            self.finished[name].set()

    def _start(self, name: str, **options) -> subprocess.Popen:
        process = subprocess.Popen(self.commands[name].argv, start_new_session=True, **options)
        with self.lock:
            self.running[name] = process
        return process

    def _run_on_a_terminal(self, name: str, environment: dict[str, str]) -> subprocess.CompletedProcess:
        import fcntl
        import pty
        import select
        import struct
        import termios
        import time

        command = self.commands[name]
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        deadline = time.monotonic() + command.timeout
        process = self._start(name, cwd=command.cwd, env=environment, stdin=follower, stdout=follower,
                              stderr=follower)
        os.close(follower)
        chunks = []
        try:
            while True:
                if not select.select([leader], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise subprocess.TimeoutExpired(command.argv, command.timeout)
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the process has closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            os.close(leader)
        return subprocess.CompletedProcess(command.argv, returncode, b"".join(chunks).decode(errors="replace"), "")

    def launched(self, name: str) -> Launched:
        """The finished command ``name``, with the folder it wrote."""
        if name not in self.scheduled:
            raise RuntimeError(f"the background command {name!r} was asked for but not scheduled: name the fixture "
                               f"that runs it in tests/conftest.py FIXTURE_COMMANDS")
        if self._take(name) is not None:  # not started yet: run it here, beside the lane's current command
            self._run(name)
        while not self.finished[name].is_set() and (other := self._take()) is not None:
            self._run(other)  # rather than wait with a core idle, run the lane's next command here
        self.finished[name].wait()
        result = self.results[name]
        if isinstance(result, BaseException):
            raise result
        return Launched(result, self.commands[name].output_dir)

    def stop(self) -> None:
        """Run nothing more, and end what is running (a session stopped early, by -x or Ctrl-C)."""
        self.stopped = True
        for name in list(self.running):
            self._kill(name)

    def _kill(self, name: str) -> None:
        import signal

        process = self.running.get(name)
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # torchrun's and accelerate's workers too
            process.wait()


def _process_environment() -> dict[str, str]:
    from .helpers import cli_environment

    return cli_environment()


def _background_position(item) -> int:
    """0 for a test that needs no background command, else 1 + the position of the last one it needs."""
    needed = commands_needed(item.fixturenames)
    return 1 + BACKGROUND.index(needed[-1]) if needed else 0


def pytest_collection_modifyitems(session, config, items):
    unmarked = [item.nodeid for item in items if _background_position(item) and not item.get_closest_marker("slow")]
    if unmarked:  # the quick loop (-m "not slow") must not wait for the main job
        raise pytest.UsageError(f"mark these tests @pytest.mark.slow: they use the session's real processes "
                                f"(tests/conftest.py, BACKGROUND): {unmarked}")
    items.sort(key=_background_position)  # (stable: otherwise in the order of the files)


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory):
    """The session's :class:`Background` commands, started now for the collected tests that need them."""
    import atexit

    needed = {name for item in request.session.items for name in commands_needed(item.fixturenames)}
    lane = Background(background_commands(tmp_path_factory.mktemp("background")),
                      [name for name in BACKGROUND if name in needed])
    atexit.register(lane.stop)  # (also when the session ends without tearing its fixtures down)
    yield lane
    lane.stop()


@pytest.fixture(scope="session")
def main_job(background) -> Launched:
    """The README's main job as a user runs it (see the module docstring)."""
    return background.launched("main_job")


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in sorted(folder.rglob("*"))}


@pytest.fixture(scope="session")
def finished_runs(main_job):
    """``{(method, implementation): folder}``: the main job's finished run of every installed cell. Read only."""
    result, output_dir = main_job
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {cell: output_dir / "-".join(cell) for cell in ALL_CELLS if (output_dir / "-".join(cell) / "results.json")
            .is_file()}
    before = _listing(output_dir)
    yield runs
    changed = sorted(set(_listing(output_dir).items()) ^ set(before.items()))
    assert not changed, f"a test wrote into the shared finished runs (copy them with copy_run first): {changed[:5]}"


@pytest.fixture
def copy_run(tmp_path):
    """``copy_run(folder, name=None)``: a copy of a run folder under this test's ``tmp_path``, to write into."""
    def copy(folder: Path, name: str | None = None) -> Path:
        return Path(shutil.copytree(folder, tmp_path / (name or Path(folder).name)))

    return copy


def readme_python_example() -> str:
    """The README's Python example (its first ``python`` block), as written."""
    import re

    return re.search(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), flags=re.S).group(1)


def launched_fixture(name: str, description: str):
    """A session fixture named ``name`` that returns the finished :data:`BACKGROUND` command ``name``."""
    def fixture(background) -> Launched:
        return background.launched(name)

    fixture.__doc__ = description
    return pytest.fixture(scope="session", name=name)(fixture)


LAUNCHED_FIXTURES = {  # the session fixtures that are one BACKGROUND command of the same name: name -> what it is
    "readme_example": "The README's Python example, as written, in a fresh interpreter (see the module docstring).",
    "torchrun_every_cell": "Every cell trained by two gloo processes under torchrun (see the module docstring).",
    "accelerate_lora_library": "peft's LoRA cell trained by two CPU processes under ``accelerate launch``.",
    "terminal_run": "The tiny preset (30 steps, evaluated twice) on a pseudo-terminal: ``.result.stdout`` is its screen.",
    "transformers_verbosity_info": "A 2-step run of the tiny preset in a process with ``TRANSFORMERS_VERBOSITY=info``.",
    "unknown_method_process": "``python run_experiment.py --preset tiny --method qlora`` (no such method), a process.",
    "gpu_smoke_dry_run": "``bash benchmarks/gpu_smoke.sh --dry-run`` with ``SMOKE_DIR`` at ``.output_dir``.",
}
globals().update({name: launched_fixture(name, description) for name, description in LAUNCHED_FIXTURES.items()})


@pytest.fixture(scope="session")
def two_process_evaluations(background, finished_runs) -> dict[str, Launched]:
    """``{"torchrun": ..., "accelerate": ...}``: ``hf-peft-suite evaluate`` of the main job's peft LoRA run by two
    processes under each launcher, on :data:`TWO_PROCESS_EVALUATION`'s examples and batches."""
    return {"torchrun": background.launched("torchrun_evaluation"),
            "accelerate": background.launched("accelerate_evaluation")}


FRESH_INTERPRETER = """
import json, sys, tempfile
import hf_peft_suite
from transformers import AutoConfig, AutoModelForSeq2SeqLM
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING
report = {"heavy": [m for m in ("peft", "adapters", "datasets", "transformers.trainer", "evaluate", "matplotlib")
                    if m in sys.modules]}
configs = {name: type(AutoConfig.for_model(name)) for name in sys.argv[1:]}
report["registered"] = {name: [config.__name__, MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING[config].__name__]
                        for name, config in configs.items()}
from hf_peft_suite.methods import METHODS, build_method_model
from hf_peft_suite.tiny import build_tiny_model, build_tiny_tokenizer
tokenizer = build_tiny_tokenizer()
inputs = tokenizer(["great"], return_tensors="pt")
for method in METHODS:
    model = build_method_model(build_tiny_model(), method, "scratch", None, tokenizer)
    model(**inputs, labels=tokenizer(["positive"], return_tensors="pt").input_ids).loss.backward()
    if method != "full":
        folder = tempfile.mkdtemp()
        model.save_pretrained(folder)
        model = AutoModelForSeq2SeqLM.from_pretrained(folder, base_model=build_tiny_model())
    model.generate(**inputs, max_new_tokens=2)
report["peft_imported_by_the_scratch_path"] = sorted(name for name in sys.modules if name.split(".")[0] == "peft")
print(json.dumps(report))
"""


def delta_model_types() -> list[str]:
    """The ``model_type`` of every hand-written method's config (DeltaConfig's subclasses in the package)."""
    from hf_peft_suite.methods.delta import DeltaConfig

    def subclasses(cls) -> list[type]:
        found = [sub for sub in cls.__subclasses__() if sub.__module__.startswith("hf_peft_suite.")]
        return found + [deeper for sub in found for deeper in subclasses(sub)]

    return sorted(config.model_type for config in subclasses(DeltaConfig))


@pytest.fixture(scope="session")
def fresh_interpreter(background) -> dict:
    """What a fresh interpreter reports after importing hf_peft_suite and using every scratch method (see above)."""
    import json

    result, _ = background.launched("fresh_interpreter")
    assert result.returncode == 0, result.stderr[-3000:]
    return {"model_types": delta_model_types(), **json.loads(result.stdout.strip().splitlines()[-1])}
