"""hf_peft_suite: fine-tune T5 with full fine-tuning, prompt tuning, adapters and LoRA, from scratch and with
PEFT libraries, and compare them side by side.

Importing the package registers every hand-written method with ``AutoConfig`` and ``AutoModelForSeq2SeqLM``::

    import hf_peft_suite
    results = hf_peft_suite.run_experiment(method="lora", preset="tiny", output_dir="out/lora")

What importing costs: 3.4 s of imports (4.1 to 4.7 s for ``python -c "import hf_peft_suite"``) on a quiet two-core
machine, nearly all of it torch (1.2 s) and transformers' modeling utilities (2.2 s), which registering with the Auto
classes needs; the package's own modules add about 0.05 s. The
rest of the API is imported on first use, so ``import hf_peft_suite`` loads neither peft, datasets, AdapterHub nor
``transformers.Trainer`` (which imports ``peft`` when it is installed), and the scratch methods never import a PEFT
library.
"""

from importlib import import_module

from . import methods
from .errors import UsageError
from .version import __version__

_LAZY = {
    "run_experiment": "experiment",
    "load_data": "data",
    "build_model": "modeling",
    "count_parameters": "modeling",
    "load_base_model": "modeling",
    "load_tokenizer": "modeling",
    "LabelScorer": "metrics",
    "GenerationAccuracyTrainer": "trainer",
    "run_comparison": "comparison",
    "write_report": "report",
    "load_run": "runs",
    "evaluate_run": "runs",
}

__all__ = ["UsageError", "__version__", "methods", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
