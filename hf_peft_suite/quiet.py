"""What the libraries print during a run: quiet by default, their own logs back with ``--verbose``.

Quiet means: transformers and AdapterHub log only errors, datasets nothing (a failed read it logs before raising
becomes the run's one ``error:`` line); the progress bars of datasets (tokenizing, flattening) and of transformers
(writing model shards) are off; the libraries' ``FutureWarning`` and ``DeprecationWarning`` (addressed to the authors
of code that calls them, not to its users) are not shown. What stays: errors, this package's own progress lines and
tables, the progress bars of downloads from the Hub, and other warnings.

The usual settings win over quiet: ``TRANSFORMERS_VERBOSITY``, ``HF_DATASETS_VERBOSITY``,
``HF_DATASETS_DISABLE_PROGRESS_BARS`` and Python's ``-W`` / ``PYTHONWARNINGS`` keep what they ask for, and a
``--log_level`` / ``--log_level_replica`` given to Trainer is Trainer's to apply.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

# Loggers of libraries that log through the standard library rather than transformers' logging.
STDLIB_LOGGERS = ("adapters",)
DEVELOPER_WARNINGS = (FutureWarning, DeprecationWarning)


def apply_library_output(verbose: bool = False) -> None:
    """Set the libraries' logging, progress bars and warning filters for a quiet (or ``verbose``) run."""
    from transformers.utils import logging as transformers_logging

    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        transformers_logging.set_verbosity(transformers_logging.WARNING if verbose else transformers_logging.ERROR)
    _set_transformers_progress_bars(verbose)
    _set_datasets_output(verbose)
    for name in STDLIB_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)
    if not sys.warnoptions:
        for category in DEVELOPER_WARNINGS:
            warnings.filterwarnings("default" if verbose else "ignore", category=category)


@contextlib.contextmanager
def library_output(verbose: bool = False):
    """:func:`apply_library_output` for the duration of a ``with`` block; what was set before comes back after it."""
    saved = _current_output()
    with warnings.catch_warnings():
        apply_library_output(verbose)
        try:
            yield
        finally:
            _restore_output(saved)


def quiet_after_trainer_init(trainer, verbose: bool) -> None:
    """Trainer sets transformers' verbosity from ``--log_level`` / ``--log_level_replica`` as it starts: on every
    process but the first that is "warning" by default, which would bring each warning back once per extra process.
    Where neither was given, the run's own setting is applied again."""
    args = trainer.args
    if verbose or "TRANSFORMERS_VERBOSITY" in os.environ:
        return
    if args.log_level == "passive" and args.log_level_replica == "warning":  # Trainer's defaults: nothing asked
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()


def _set_transformers_progress_bars(enabled: bool) -> None:
    """transformers' own bars (writing model shards) on or off, leaving the Hub's download bars as they were."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    hub_bars_off = hub_utils.are_progress_bars_disabled()
    if enabled:
        transformers_logging.enable_progress_bar()
    else:
        transformers_logging.disable_progress_bar()
    if hub_bars_off != hub_utils.are_progress_bars_disabled():
        (hub_utils.disable_progress_bars if hub_bars_off else hub_utils.enable_progress_bars)()


def _set_datasets_output(verbose: bool) -> None:
    import datasets

    if "HF_DATASETS_VERBOSITY" not in os.environ:
        # Quiet, not even errors: datasets logs a failed file read before raising, and the exception becomes the
        # run's one error: line.
        datasets.logging.set_verbosity(datasets.logging.WARNING if verbose else datasets.logging.CRITICAL)
    if "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ:
        (datasets.enable_progress_bars if verbose else datasets.disable_progress_bars)()


def _current_output() -> dict:
    import datasets
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    return {
        "transformers": transformers_logging.get_verbosity(),
        "transformers_bars": transformers_logging.is_progress_bar_enabled(),
        "hub_bars_off": hub_utils.are_progress_bars_disabled(),
        "datasets": datasets.logging.get_verbosity(),
        "datasets_bars": datasets.is_progress_bar_enabled(),
        "stdlib": {name: logging.getLogger(name).level for name in STDLIB_LOGGERS},
    }


def _restore_output(saved: dict) -> None:
    import datasets
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity(saved["transformers"])
    _set_transformers_progress_bars(saved["transformers_bars"])
    if saved["hub_bars_off"] != hub_utils.are_progress_bars_disabled():
        (hub_utils.disable_progress_bars if saved["hub_bars_off"] else hub_utils.enable_progress_bars)()
    datasets.logging.set_verbosity(saved["datasets"])
    if "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ:
        (datasets.enable_progress_bars if saved["datasets_bars"] else datasets.disable_progress_bars)()
    for name, level in saved["stdlib"].items():
        logging.getLogger(name).setLevel(level)
