"""hf_peft_suite: fine-tune T5 with full fine-tuning, prompt tuning, adapters and LoRA, from scratch and with
PEFT libraries, and compare them side by side.

Importing the package registers every hand-written method with ``AutoConfig`` and ``AutoModelForSeq2SeqLM``.
"""

from . import methods
from .errors import UsageError
from .version import __version__

__all__ = ["UsageError", "__version__", "methods"]
