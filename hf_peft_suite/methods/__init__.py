"""The method registry: method name -> how to build it from scratch and with a PEFT library.

Each technique lives in one file of this package that defines a :class:`Method` named ``METHOD``, with the
hand-written module and the library configuration side by side. Nothing here knows about the CLI, the dataset or the
Trainer: a builder takes a base ``PreTrainedModel`` and the method's options and returns the model to train.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UsageError

IMPLEMENTATIONS = ("scratch", "library")


@dataclass(frozen=True)
class Method:
    """One fine-tuning technique and its two implementations.

    Attributes:
        name: the ``--method`` value.
        summary: one line for ``--help`` and the docs.
        options: the dataclass holding this method's own CLI options (``None`` if it has none). Its field names are
            prefixed with the method (``lora_r``), so all methods' options share one command line.
        default_learning_rate: used when the user gives no ``--learning_rate``.
        learning_rate_source: where that default comes from (paper, library docs, measurement).
        build_scratch: ``(base_model, options, tokenizer) -> model`` using only this project's modules.
        build_library: ``(base_model, options, tokenizer) -> model`` using the PEFT library, or ``None`` if no
            library has it. Library imports happen inside it, so the scratch path never imports the library.
        library_module: the importable name of that library (``peft``, ``adapters``).
        library_install_hint: what to run when the library is missing.
        save_library: ``(model, directory) -> None`` writing the library model's delta-only artifact, for libraries
            whose ``model.save_pretrained`` would write the whole model (AdapterHub); ``None`` means
            ``model.save_pretrained(directory)``.
        load_library: ``(model, directory) -> None`` loading what ``save_library`` wrote back into a library model
            built with the same options, in place (the parameters the optimizer holds keep their identity), to resume
            training from a checkpoint; ``None`` means ``Trainer``'s own loading.
    """

    name: str
    summary: str
    options: type | None
    default_learning_rate: float
    learning_rate_source: str
    build_scratch: Callable[[Any, Any], Any]
    build_library: Callable[[Any, Any], Any] | None = None
    library_module: str | None = None
    library_install_hint: str | None = None
    save_library: Callable[[Any, str], None] | None = None
    load_library: Callable[[Any, str], None] | None = None

    def builder(self, implementation: str) -> Callable[[Any, Any], Any]:
        """The builder for ``implementation``, or a :class:`UsageError` saying why it cannot be had."""
        if implementation not in IMPLEMENTATIONS:
            raise UsageError(
                f"unknown implementation {implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)} "
                f"(--implementation scratch|library)"
            )
        if implementation == "scratch":
            return self.build_scratch
        if self.build_library is None:
            raise UsageError(
                f"--method {self.name} has no library implementation (no PEFT library provides it); "
                f"use --implementation scratch"
            )
        problem = library_problem(self)
        if problem:
            raise UsageError(problem)
        return self.build_library


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
    except Exception as error:  # e.g. AdapterHub `adapters` beside an unsupported transformers version
        return (
            f"--method {method.name} --implementation library: {method.library_module!r} is installed but fails "
            f"to import ({type(error).__name__}: {error}); install a compatible set with: "
            f"{method.library_install_hint}"
        )
    return None


def _registered_methods() -> dict[str, Method]:
    from . import adapter, full, lora, prompt_tuning

    methods = [full.METHOD, prompt_tuning.METHOD, adapter.METHOD, lora.METHOD]
    return {method.name: method for method in methods}


METHODS: dict[str, Method] = _registered_methods()


def get_method(name: str) -> Method:
    """The registered method called ``name``; a :class:`UsageError` listing the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(f"unknown method {name!r}; choose one of {', '.join(METHODS)} (--method NAME)") from None


def build_method_model(base_model, method_name: str, implementation: str, options=None, tokenizer=None):
    """Apply ``method_name`` in ``implementation`` to ``base_model`` and return the model to train."""
    return get_method(method_name).builder(implementation)(base_model, options, tokenizer)
