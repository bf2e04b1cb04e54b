"""What a method is: its options, its recommended settings, and its two implementations with their artifact formats.

Each technique's file (``full.py``, ``prompt_tuning.py``, ``adapter.py``, ``lora.py``) defines one :class:`Method`
called ``METHOD``; ``methods/__init__.py`` collects them into the registry. Nothing here knows about the CLI, the
dataset or the Trainer.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from ..compat import incompatible, internal_problems
from ..errors import UsageError
from .formats import ArtifactFormat

IMPLEMENTATIONS = ("scratch", "library")


@dataclass(frozen=True)
class Recommended:
    """A method's recommended settings (argument name -> value) and where they come from.

    ``settings["learning_rate"]`` is also the method's default learning rate when a run gives none; the whole set
    is what ``--method all`` starts each cell from.
    """

    source: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """One fine-tuning technique and its two implementations.

    Attributes:
        name: the ``--method`` value.
        options: the dataclass holding this method's own CLI options (``None`` if it has none). Its field names are
            prefixed with the method (``lora_r``), so all methods' options share one command line.
        recommended: the recommended settings and their source (the default learning rate is among them).
        build_scratch: ``(base_model, options, tokenizer) -> model`` using only this project's modules.
        scratch_format: how the scratch model's trainable weights are saved, checked and loaded back.
        build_library: ``(base_model, options, tokenizer) -> model`` using the PEFT library, or ``None`` if no
            library has it. Library imports happen inside it, so the scratch path never imports the library.
        library_format: the same for the library model.
        library_module: the importable name of that library (``peft``, ``adapters``).
        library_install_hint: what to run when the library is missing.
        supports_gradient_checkpointing: ``False`` refuses ``--gradient_checkpointing`` before anything is loaded.
        library_loading_lines: Python lines a model card adds after loading the library model as ``model`` (a fix
            the library needs; ``hf_peft_suite`` is imported there).
    """

    name: str
    options: type | None
    recommended: Recommended
    build_scratch: Callable[..., Any]
    scratch_format: ArtifactFormat
    build_library: Callable[..., Any] | None = None
    library_format: ArtifactFormat | None = None
    library_module: str | None = None
    library_install_hint: str | None = None
    supports_gradient_checkpointing: bool = True
    library_loading_lines: tuple[str, ...] = ()

    @property
    def default_learning_rate(self) -> float:
        return self.recommended.settings["learning_rate"]

    @property
    def learning_rate_source(self) -> str:
        return self.recommended.source

    def builder(self, implementation: str) -> Callable[..., Any]:
        """The builder for ``implementation``, or a :class:`UsageError` saying why it cannot be had."""
        self._check_available(implementation)
        return self.build_scratch if implementation == "scratch" else self.build_library

    def artifact_format(self, implementation: str) -> ArtifactFormat:
        """How ``implementation``'s trainable weights are written to and read from a folder."""
        self._check_available(implementation)
        return self.scratch_format if implementation == "scratch" else self.library_format

    def _check_available(self, implementation: str) -> None:
        if implementation not in IMPLEMENTATIONS:
            raise UsageError(
                f"unknown implementation {implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)} "
                f"(--implementation scratch|library)"
            )
        if implementation == "scratch":
            return
        if self.build_library is None:
            raise UsageError(
                f"--method {self.name} has no library implementation (no PEFT library provides it); "
                f"use --implementation scratch"
            )
        problem = library_problem(self)
        if problem:
            raise UsageError(problem)


# What a third-party library can raise while it is imported beside versions it does not support (AdapterHub's
# `adapters` beside transformers 5 raises ImportError; others have raised AttributeError or RuntimeError).
LIBRARY_IMPORT_ERRORS = (ImportError, AttributeError, RuntimeError, TypeError, ValueError)


def library_problem(method: Method) -> str | None:
    """Why ``method``'s library cannot be used here (not installed, or fails to import), or ``None`` if it can."""
    if method.library_module is None:
        return None
    # An imported lazy module (AdapterHub's is a transformers _LazyModule) has no __spec__: find_spec would raise.
    if method.library_module not in sys.modules and importlib.util.find_spec(method.library_module) is None:
        return (
            f"--method {method.name} --implementation library needs the {method.library_module!r} package, "
            f"which is not installed; install it with: {method.library_install_hint}"
        )
    try:
        importlib.import_module(method.library_module)
    except LIBRARY_IMPORT_ERRORS as error:
        return (
            f"--method {method.name} --implementation library: {method.library_module!r} is installed but fails "
            f"to import ({type(error).__name__}: {error}); install a compatible set with: "
            f"{method.library_install_hint}"
        )
    problems = internal_problems(method.library_module)
    return f"--method {method.name} --implementation library: {incompatible(method.library_module, problems[0])}" \
        if problems else None
