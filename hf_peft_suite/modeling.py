"""Load the tokenizer and base model, apply a method, count parameters.

Models load with safetensors only (a folder holding only pickled ``.bin`` weights is refused, never unpickled) and
never run remote code (``trust_remote_code=False``: a model that needs its own code is refused, without a prompt).
A name that cannot be reached (no network), a local path that does not exist, a damaged weights file or a model that
is not an encoder-decoder is a :class:`UsageError` with the way out.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .compat import full_numel
from .errors import UsageError
from .methods import build_method_model, get_method
from .tiny import TINY_MODEL_NAME, build_tiny_model, build_tiny_tokenizer
from .weights import first_line

OFFLINE_HINT = (
    "Without network access, run `--preset tiny` (built in, offline), or point --model_name_or_path at a local "
    "folder holding the model (HF_HUB_OFFLINE=1 makes this fail at once instead of retrying the network)"
)


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def loading_errors() -> tuple[type[BaseException], ...]:
    """What ``from_pretrained`` raises for a name it cannot reach or a folder it cannot read: ``OSError`` (missing,
    offline, no safetensors), ``ValueError`` (unknown architecture, custom code refused, bad JSON), ``KeyError``
    (a config without ``model_type``) and safetensors' error for a damaged weights file. Anything else is a bug."""
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, SafetensorError)


def _unreachable(kind: str, name: str, error: Exception) -> UsageError:
    """The UsageError for a model or tokenizer that failed to load, naming the likely cause and its fix."""
    reason = first_line(error)
    if "trust_remote_code" in str(error) or "custom code" in str(error):
        return UsageError(
            f"the {kind} {name!r} needs its own Python code to load, and this toolkit never runs remote or custom "
            f"code; use a model with a built-in architecture (T5, BART, ...)"
        )
    folder = Path(os.path.expanduser(name))
    if folder.is_dir():
        if kind == "model" and not any(folder.glob("*.safetensors")) and any(
                path for pattern in PICKLE_WEIGHTS for path in folder.glob(pattern)):
            return UsageError(
                f"the model folder {name} holds only pickled weights (.bin/.pt), which are never loaded here because "
                f"unpickling can run code; convert them to safetensors where you trust the file "
                f"(model.save_pretrained(folder, safe_serialization=True))"
            )
        return UsageError(
            f"cannot load the {kind} from the folder {name} ({type(error).__name__}: {reason}); the folder must hold "
            f"a complete {kind} saved with save_pretrained (a damaged or truncated file: save or copy it again)"
        )
    return UsageError(f"cannot load the {kind} {name!r} ({reason}). {OFFLINE_HINT}")


def check_local_path(name: str, kind: str) -> None:
    """Refuse a path-like name (``./x``, ``/x``, ``~/x``) that does not exist, rather than asking the Hub for it."""
    if name.startswith((".", "/", "~")) and not os.path.exists(os.path.expanduser(name)):
        raise UsageError(
            f"the {kind} path {name} does not exist; give an existing folder, or a Hugging Face Hub id such as "
            f"t5-small"
        )


# Files one of which every saved tokenizer has (fast tokenizers, SentencePiece, WordPiece and BPE vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model", "vocab.json", "vocab.txt")


def load_tokenizer(model_name_or_path: str = "t5-small", tokenizer_name_or_path: str | None = None):
    """The model's tokenizer (or the named one); the built-in tiny model has a tokenizer built in code."""
    name = tokenizer_name_or_path or model_name_or_path
    if name == TINY_MODEL_NAME:
        return build_tiny_tokenizer()
    from transformers import AutoTokenizer

    check_local_path(name, "tokenizer" if tokenizer_name_or_path else "model")
    folder = Path(os.path.expanduser(name))
    if folder.is_dir() and not any((folder / file).is_file() for file in TOKENIZER_FILES):
        option = "--tokenizer_name_or_path" if tokenizer_name_or_path else "--model_name_or_path"
        raise UsageError(
            f"the folder {name} holds no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...); save the "
            f"tokenizer there with tokenizer.save_pretrained, or name one with --tokenizer_name_or_path"
            if option == "--model_name_or_path" else
            f"the folder {name} ({option}) holds no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...); "
            f"give a folder saved with tokenizer.save_pretrained, or a Hub id"
        )
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except loading_errors() as error:
        raise _unreachable("tokenizer", name, error) from None


def load_model_config(model_name_or_path: str):
    """The base model's config, refusing models that are not encoder-decoders."""
    from transformers import AutoConfig

    if model_name_or_path == TINY_MODEL_NAME:
        from .tiny import tiny_t5_config

        return tiny_t5_config()
    check_local_path(model_name_or_path, "model")
    try:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=False)
    except loading_errors() as error:
        raise _unreachable("model", model_name_or_path, error) from None
    if not getattr(config, "is_encoder_decoder", False):
        raise UsageError(
            f"{model_name_or_path!r} is a {config.model_type} model, not an encoder-decoder; this toolkit fine-tunes "
            f"seq2seq models that write the label word, such as t5-small (--model_name_or_path t5-small)"
        )
    return config


def load_base_model(model_name_or_path: str = "t5-small", random_init: bool = False, seed: int = 0):
    """The base seq2seq model: pretrained weights (safetensors), or random weights from its config."""
    from transformers import AutoModelForSeq2SeqLM

    if model_name_or_path == TINY_MODEL_NAME:
        return build_tiny_model(seed=seed)
    config = load_model_config(model_name_or_path)
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForSeq2SeqLM.from_config(config)
        model.name_or_path = model_name_or_path
        return model
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(model_name_or_path, use_safetensors=True, trust_remote_code=False)
    except loading_errors() as error:
        raise _unreachable("model", model_name_or_path, error) from None


def build_model(
    model_name_or_path: str = "t5-small",
    method: str = "full",
    implementation: str = "scratch",
    options=None,
    tokenizer=None,
    random_init: bool = False,
    seed: int = 0,
    base_model=None,
):
    """The model to train: the base with ``method`` applied in ``implementation``, and its tokenizer.

    ``options`` is the method's options dataclass (e.g. ``LoraArguments(lora_r=16)``), defaults if ``None``.
    Returns ``(model, tokenizer)``.
    """
    chosen = get_method(method)
    chosen.builder(implementation)  # a usage error (no library implementation, library missing) before any loading
    tokenizer = tokenizer or load_tokenizer(model_name_or_path)
    if base_model is None:
        base_model = load_base_model(model_name_or_path, random_init=random_init, seed=seed)
    if options is None and chosen.options is not None:
        options = chosen.options()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_method_model(base_model, method, implementation, options, tokenizer)
    return model, tokenizer


def count_parameters(model) -> dict[str, float]:
    """Total and trainable parameters (each shared tensor counted once) and the trainable share in percent, counted
    whole also where DeepSpeed ZeRO-3 has partitioned them (:func:`~hf_peft_suite.compat.full_numel`)."""
    seen, total, trainable = set(), 0, 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        size = full_numel(parameter)
        total += size
        trainable += size if parameter.requires_grad else 0
    return {"total": total, "trainable": trainable, "trainable_percent": 100.0 * trainable / total}
