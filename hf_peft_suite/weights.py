"""Checks on saved weights and configs before they are loaded: names, shapes, options, readability.

Used when a checkpoint is resumed and when a library adapter is loaded back, so a file saved by another method, with
other options, for another base, or damaged on disk is a :class:`~hf_peft_suite.errors.UsageError` naming the problem,
not a silent partial load or a traceback. Only safetensors headers and JSON are read: nothing is unpickled.
"""

from __future__ import annotations

import json
import os

from .errors import UsageError

# Config fields that may differ between a saved config and the model it is loaded into (paths, versions, modes).
CONFIG_FIELDS_NOT_COMPARED = frozenset({
    "transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype", "base_model_name_or_path",
    "inference_mode", "peft_version", "revision", "auto_mapping", "use_cache", "tokenizer_name_or_path",
    # Trainer aligns these with the tokenizer when it is built, so a checkpoint has them and a fresh model may not
    "pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id",
})


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _comparable(value):
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value, key=str)
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    return getattr(value, "value", value)  # enums (peft's PeftType, TaskType) as their JSON strings


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """``field saved vs current`` for every field both configs have that differs (paths and versions aside);
    nested dicts (a delta's ``base_model_config``) are compared field by field."""
    differences = []
    for key in sorted(set(saved) & set(current) - CONFIG_FIELDS_NOT_COMPARED):
        saved_value, current_value = saved[key], current[key]
        if isinstance(saved_value, dict) and isinstance(current_value, dict):
            differences += config_differences(saved_value, current_value, f"{prefix}{key}.")
            continue
        if isinstance(current_value, (set, frozenset)) and isinstance(saved_value, list):
            saved_value = set(saved_value)  # a set saved as a JSON list, in any order (peft's target_modules)
        if _comparable(saved_value) != _comparable(current_value):
            differences.append(f"{prefix}{key} {saved[key]!r} (saved) vs {_comparable(current_value)!r} (this run)")
    return differences


def check_saved_config(path: str, current: dict, section: str | None = None) -> None:
    """The JSON config at ``path`` (its ``section`` object, if given) must exist, be readable and agree with
    ``current`` (paths and versions aside)."""
    if not os.path.isfile(path):
        raise UsageError(f"it holds no {os.path.basename(path)}, so it was not written by this method")
    try:
        with open(path, encoding="utf-8") as file:
            saved = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is damaged ({first_line(error)}); the file is truncated or not JSON") from None
    if section is not None and isinstance(saved, dict):
        saved = saved.get(section)
    if not isinstance(saved, dict):
        raise UsageError(f"{path} is damaged: it holds no JSON object{f' {section!r}' if section else ''}")
    differences = config_differences(saved, current)
    if differences:
        raise UsageError(
            f"it was saved with other options ({'; '.join(differences[:3])}); resume with the arguments of the run "
            f"that wrote it"
        )


def _safetensors_errors() -> tuple[type[BaseException], ...]:
    """What reading a missing, truncated or corrupted safetensors file raises."""
    from safetensors import SafetensorError

    return (SafetensorError, OSError)


def tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a safetensors file, from its header; a damaged file is a UsageError."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as file:
            return {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}
    except _safetensors_errors() as error:
        raise UsageError(f"cannot read {path} ({first_line(error)}); the file is corrupted or truncated") from None


def sharded_tensor_shapes(index_path: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a sharded safetensors model (``model.safetensors.index.json`` and its shards), from the
    shards' headers; a damaged index or shard is a UsageError."""
    try:
        with open(index_path, encoding="utf-8") as file:
            weight_map = json.load(file)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"cannot read {index_path} ({first_line(error)}); the file is damaged") from None
    shapes = {}
    for shard in sorted(set(weight_map.values())):
        shapes.update(tensor_shapes(os.path.join(os.path.dirname(index_path), shard)))
    return shapes


def load_tensors(path: str) -> dict:
    """All tensors of a safetensors file; a damaged or truncated file is a UsageError."""
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except _safetensors_errors() as error:
        raise UsageError(f"cannot read {path} ({first_line(error)}); the file is corrupted or truncated") from None


def compare_shapes(expected: dict[str, tuple], saved: dict[str, tuple], source: str) -> None:
    """Refuse ``saved`` unless it holds exactly the ``expected`` tensor names with the expected shapes."""
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    wrong = [
        f"{name} {tuple(saved[name])} vs {tuple(expected[name])}"
        for name in sorted(set(expected) & set(saved))
        if tuple(saved[name]) != tuple(expected[name])
    ]
    if missing or unexpected or wrong:
        found = [f"{label} {len(names)}, e.g. {names[0]}" for label, names in
                 (("missing", missing), ("unexpected", unexpected), ("other shapes", wrong)) if names]
        raise UsageError(
            f"{source} does not match this model's trainable weights ({'; '.join(found)}): it was saved for "
            f"another method, other options or another base model"
        )
