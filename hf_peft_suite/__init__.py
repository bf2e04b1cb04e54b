"""hf_peft_suite: fine-tune T5 with full fine-tuning, prompt tuning, adapters and LoRA, from scratch and with
PEFT libraries, and compare them side by side.

Importing the package registers every hand-written method with ``AutoConfig`` and ``AutoModelForSeq2SeqLM``::

    import hf_peft_suite
    results = hf_peft_suite.run_experiment(method="lora", preset="tiny", output_dir="out/lora")
"""

from . import methods
from .data import load_data
from .errors import UsageError
from .experiment import run_experiment
from .metrics import LabelScorer
from .modeling import build_model, count_parameters, load_base_model, load_tokenizer
from .trainer import GenerationAccuracyTrainer
from .version import __version__

__all__ = [
    "GenerationAccuracyTrainer",
    "LabelScorer",
    "UsageError",
    "__version__",
    "build_model",
    "count_parameters",
    "load_base_model",
    "load_data",
    "load_tokenizer",
    "methods",
    "run_experiment",
]
