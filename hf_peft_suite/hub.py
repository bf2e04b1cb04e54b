"""The model card of a finished run, and pushing the run's trained delta to the Hugging Face Hub.

``--push_to_hub --hub_model_id NAME`` (or ``hf-peft-suite push OUTPUT_DIR --hub_model_id NAME`` afterwards) uploads
exactly what a user needs to load the trained cell, and nothing else:

- the trainable weights and their config, as the cell saves them in ``output_dir/model/``: ``config.json`` +
  ``model.safetensors`` (scratch cells: only the delta; full fine-tuning: the whole model, which is what it trains,
  plus ``generation_config.json``), ``adapter_config.json`` + ``adapter_model.safetensors`` (peft) or
  ``adapter.safetensors`` (AdapterHub);
- ``README.md``, the model card (:func:`model_card`): method, implementation, base model, dataset, the metrics of
  ``results.json``, trainable parameters, and the exact lines that load it.

Never the tokenizer (it is the base model's), never a pickle. The repository ends up holding exactly these files:
files of an earlier push that are not part of this one are deleted in the same commit.

This is our own upload (``huggingface_hub``'s ``create_repo`` + ``upload_folder``) after training, not ``Trainer``'s
``push_to_hub``, which would push every checkpoint with the tokenizer and training arguments.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .compat import hub_revision, start_command
from .errors import UsageError
from .files import ARTIFACT_FOLDER, MODEL_CARD_NAME, RESULTS_NAME
from .methods import get_method
from .run_folder import write_results
from .task import InputTemplate, task_text
from .tiny import TINY_MODEL_NAME
from .weights import first_line

# What is pushed from output_dir/model/: weights (safetensors only) and their configs.
PUSHED_FILE_PATTERNS = (
    "*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json", "adapter_config.json",
)
LIBRARY_NAMES = {"peft": "peft", "adapters": "adapter-transformers"}


@dataclass
class PushSettings:
    """Where and how to push: the repository id, the token, and the repository's visibility and branch."""

    repo_id: str
    token: str | None = None
    private: bool | None = None
    revision: str | None = None


def push_settings(training, output_dir: str | os.PathLike) -> PushSettings | None:
    """The push a run asks for (``--push_to_hub``), checked before training; ``None`` when it asks for none.

    The repository id defaults to the output folder's name, as ``Trainer`` does. A missing token or an invalid id is
    a :class:`UsageError` now, not after hours of training.
    """
    if not training.push_to_hub:
        return None
    repo_id = training.hub_model_id or Path(output_dir).absolute().name
    check_repo_id(repo_id)
    return PushSettings(
        repo_id=repo_id,
        token=hub_token(training.hub_token),
        private=training.hub_private_repo,
        revision=hub_revision(training),
    )


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UsageError(
            f"--hub_model_id {repo_id!r} is not a valid repository id ({first_line(error)}); use NAME or USER/NAME "
            f"with letters, digits, '-', '_' and '.'"
        ) from None


def hub_token(given: str | None = None) -> str:
    """``given``, or the token of ``HF_TOKEN`` / ``hf auth login``; a :class:`UsageError` when there is none."""
    from huggingface_hub import get_token

    token = given or get_token()
    if not token:
        raise UsageError(
            "--push_to_hub needs a Hugging Face token with write access: run `hf auth login`, set HF_TOKEN, or pass "
            "--hub_token"
        )
    return token


# ------------------------------------------------------------------------------------------------ model card
def _is_hub_id(name: str) -> bool:
    """Whether others can load ``name`` by name: not built in code, not a folder on this machine."""
    return not name.startswith(("builtin:", ".", "/", "~")) and not os.path.exists(name)


def base_loading_lines(results: dict) -> list[str]:
    """The lines that give ``base``: the pretrained base by name, or the same random/local base rebuilt."""
    name, seed = results["model_name_or_path"], results["config"]["training"]["seed"]
    if results.get("random_init") or not _is_hub_id(name):
        random_init = ", random_init=True" if results["config"]["model"].get("random_init") else ""
        comment = {
            True: f"  # random weights, rebuilt from seed {seed} exactly as in training",
            False: "  # the base was a folder on the training machine: point this at your copy",
        }[bool(results.get("random_init"))]
        return [f'base = hf_peft_suite.load_base_model("{name}"{random_init}, seed={seed}){comment}']
    return [f'base = AutoModelForSeq2SeqLM.from_pretrained("{name}")']


def tokenizer_loading_line(results: dict) -> str:
    name = results["config"]["model"].get("tokenizer_name_or_path") or results["model_name_or_path"]
    if name == TINY_MODEL_NAME or not _is_hub_id(name):
        return f'tokenizer = hf_peft_suite.load_tokenizer("{name}")'
    return f'tokenizer = AutoTokenizer.from_pretrained("{name}")'


def loading_code(results: dict, repo_id: str) -> str:
    """The Python lines that load the pushed cell from ``repo_id`` and let it write a label word."""
    method, implementation = results["method"], results["implementation"]
    base_by_name = not results.get("random_init") and _is_hub_id(results["model_name_or_path"])
    lines = ["import hf_peft_suite  # registers the hand-written methods with the Auto classes"]
    if implementation == "scratch" and (method == "full" or base_by_name):
        lines += [
            "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
            "",
            f'model = AutoModelForSeq2SeqLM.from_pretrained("{repo_id}")',
        ]
    elif implementation == "scratch":
        lines += [
            "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
            "",
            *base_loading_lines(results),
            f'model = AutoModelForSeq2SeqLM.from_pretrained("{repo_id}", base_model=base)',
        ]
    elif library_of(results) == "peft":
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
            "",
            *base_loading_lines(results),
            f'model = PeftModel.from_pretrained(base, "{repo_id}")',
            *get_method(method).library_loading_lines,
        ]
    else:  # AdapterHub
        lines += [
            "import adapters",
            "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
            "",
            *base_loading_lines(results),
            "adapters.init(base)",
            f'base.load_adapter("{repo_id}", set_active=True, use_safetensors=True)',
            "model = base",
        ]
    words = results["label_words"]
    lines += [
        tokenizer_loading_line(results),
        "",
        f"inputs = tokenizer([{json.dumps(example_input(results), ensure_ascii=False)}], return_tensors=\"pt\")  "
        "# cleaned as in training",
        f"output = model.generate(**inputs, max_new_tokens={results['max_new_tokens']})",
        f"print(tokenizer.batch_decode(output, skip_special_tokens=True))  # one of {words}",
    ]
    return "\n".join(lines)


def example_input(results: dict) -> str:
    """An input as the run's model reads it: a review, in the run's input template where it has one (a run from
    before templates has none); ``<column>`` stands for each column but the first of a one-column template."""
    template = results.get("input_template")
    if not template:
        return "a wonderful and moving film"
    parsed = InputTemplate.parse(template)
    return parsed.example({parsed.columns[0]: "a wonderful and moving film"} if len(parsed.columns) == 1 else None)


def library_of(results: dict) -> str | None:
    """The PEFT library of a library cell (``peft`` or ``adapters``), ``None`` for scratch cells."""
    if results["implementation"] != "library":
        return None
    return get_method(results["method"]).library_module


def _metric(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _card_metadata(results: dict, library: str | None) -> list[str]:
    """The card's YAML header (library, task, tags, base model and dataset where they are Hub ids)."""
    metadata = [
        "---",
        f"library_name: {LIBRARY_NAMES.get(library, 'transformers')}",
        "pipeline_tag: text2text-generation",
        f"tags: [hf_peft_suite, {results['method']}, {results['implementation']}, text-classification]",
    ]
    if _is_hub_id(results["model_name_or_path"]) and not results.get("random_init"):
        metadata.append(f"base_model: {results['model_name_or_path']}")
    if _is_hub_id(results["dataset_name"]):
        metadata.append(f"datasets: [{results['dataset_name']}]")
    return metadata + ["metrics: [accuracy, f1]", "---"]


def _card_table(results: dict, library: str | None) -> list[str]:
    """What was trained, on what, and how well: one row per fact."""
    final, parameters = results["final_metrics"], results["parameters"]
    saved = results.get("saved_model") or {}
    which = f"this model: epoch {saved['epoch']:g}" if "epoch" in saved else "final"
    if saved.get("checkpoint"):
        which += f", {saved['chosen_by']}"
    implementation_text = {
        None: "hf_peft_suite's own modules (no PEFT library)",
        "peft": "Hugging Face peft",
        "adapters": "AdapterHub adapters",
    }[library]
    rows = [
        ("method", f"`{results['method']}`"),
        ("implementation", f"`{results['implementation']}`: {implementation_text}"),
        ("base model", f"`{results['model_name_or_path']}`" + (" (random weights)" if results.get("random_init") else "")),
        ("dataset", f"`{results['dataset_name']}` ({results['num_train_examples']:,} training, "
                    f"{results['num_eval_examples']:,} evaluation examples)"),
        *([("input", f"`{results['input_template']}`")] if results.get("input_template") else []),
        ("label words", task_text(None, results["label_map"]).removeprefix("labels ") if results.get("label_map")
         else ", ".join(f"`{word}`" for word in results["label_words"])),
        ("trainable parameters", f"{parameters['trainable']:,} of {parameters['total']:,} "
                                 f"({parameters['trainable_percent']:.4f}%)"),
        (f"accuracy ({which})", _metric(final.get("eval_accuracy"))),
        (f"macro-F1 ({which})", _metric(final.get("eval_macro_f1"))),
        (f"invalid outputs ({which})", _metric(final.get("eval_invalid_rate"))),
        ("best accuracy", f"{_metric(results['best_accuracy'])} (epoch {results['best_epoch']:g})"),
        *([("accuracy before training", _metric(results["before_training"].get("eval_accuracy")))]
          if results.get("before_training") else []),
        ("learning rate", f"{results['learning_rate']:g}"),
        ("processes", str(results.get("world_size", 1))),
    ]
    return ["| | |", "| --- | --- |", *[f"| {key} | {value} |" for key, value in rows]]


def model_card(results: dict, repo_id: str, source: str | None = None) -> str:
    """A ``README.md`` for the trained cell, from its ``results.json`` (see the module docstring). Its loading lines
    load from ``source`` (default: ``repo_id``, the Hub repository)."""
    library = library_of(results)
    data = results["config"]["data"]
    versions = ", ".join(f"{name} {version}" for name, version in results["versions"].items() if version)
    template = results.get("input_template")
    texts = "Each column" if template and len(InputTemplate.parse(template).columns) > 1 else "Each text"
    cleaning = f"{texts} was lowercased with `<br />` removed" if data.get("clean_text", True) \
        else f"{texts} was used as it is"
    cleaning += f", put into the input template `{template}`," if template else ""
    cleaning += " before training"
    return "\n".join([
        *_card_metadata(results, library),
        "",
        f"# {repo_id}",
        "",
        f"T5 fine-tuned for classification as text-to-text with **{results['method']}** ({results['implementation']} "
        f"implementation) by hf_peft_suite: the model reads a text and writes its label word. Metrics are "
        f"the accuracy of the *generated* words on the evaluation split.",
        "",
        *_card_table(results, library),
        "",
        "## Load it",
        "",
        "```python",
        loading_code(results, source or repo_id),
        "```",
        "",
        cleaning,
        f"(inputs truncated to {data['max_source_length']} tokens).",
        "",
        "## Files",
        "",
        "Only the trained weights (safetensors) and their config, plus this card. Trained with " + versions + ".",
        "",
    ])


def write_model_card(artifact_dir: str | os.PathLike, results: dict, repo_id: str | None = None) -> Path:
    """Write ``README.md`` into the artifact folder (replacing peft's template card); returns its path.

    A run pushed to ``repo_id`` is loaded by that Hub id; a local run by the folder's absolute path (its name alone
    would be looked up on the Hub).
    """
    path = Path(artifact_dir) / MODEL_CARD_NAME
    title = repo_id or Path(artifact_dir).absolute().parent.name
    path.write_text(model_card(results, title, source=repo_id or str(Path(artifact_dir).absolute())))
    return path


# ------------------------------------------------------------------------------------------------------ push
def pushed_files(artifact_dir: str | os.PathLike) -> list[str]:
    """The files of ``artifact_dir`` that are pushed (weights and their configs), README.md aside."""
    names = sorted(path.name for path in Path(artifact_dir).iterdir() if path.is_file())
    return [name for name in names if any(fnmatch.fnmatch(name, pattern) for pattern in PUSHED_FILE_PATTERNS)]


def upload_folder_to_hub(folder: str, settings: PushSettings, commit_message: str) -> str:
    """Create the repository if needed and make it hold exactly the files of ``folder``; returns its URL.

    The one function that talks to the Hub (tests replace it).
    """
    from huggingface_hub import HfApi

    api = HfApi(token=settings.token)
    url = api.create_repo(settings.repo_id, private=settings.private, exist_ok=True)
    if settings.revision:
        api.create_branch(url.repo_id, branch=settings.revision, exist_ok=True)
    api.upload_folder(
        repo_id=url.repo_id, folder_path=folder, commit_message=commit_message, revision=settings.revision,
        delete_patterns="*",  # files of an earlier push that this one does not hold (.gitattributes is kept)
    )
    return str(url)


def push_to_hub(output_dir: str | os.PathLike, repo_id: str | None = None, token: str | None = None,
                private: bool | None = None, revision: str | None = None) -> dict:
    """Push a finished run (``hf-peft-suite push OUTPUT_DIR``): see :func:`push_run`. ``repo_id`` defaults to the
    folder's name; the push is recorded under ``"hub"`` in its ``results.json``."""
    start_command(needed_for=())
    repo_id = repo_id or Path(output_dir).absolute().name
    check_repo_id(repo_id)
    record = push_run(output_dir, PushSettings(repo_id, hub_token(token), private, revision))
    results = json.loads((Path(output_dir) / RESULTS_NAME).read_text())
    results["hub"] = record
    write_results(output_dir, results)
    return record


def push_run(output_dir: str | os.PathLike, settings: PushSettings) -> dict:
    """Push ``output_dir/model``'s weights and configs with a fresh model card; returns what was pushed where.

    A failed upload is a :class:`UsageError` that says how to try again; the run's files are untouched.
    """
    output_dir = Path(output_dir)
    artifact_dir, results_path = output_dir / ARTIFACT_FOLDER, output_dir / RESULTS_NAME
    if not results_path.is_file() or not artifact_dir.is_dir():
        raise UsageError(f"{output_dir} holds no finished run ({RESULTS_NAME} and {ARTIFACT_FOLDER}/); train it first")
    results = json.loads(results_path.read_text())
    files = pushed_files(artifact_dir)
    if not any(name.endswith(".safetensors") or name.endswith(".index.json") for name in files):
        raise UsageError(f"{artifact_dir} holds no safetensors weights to push")
    with tempfile.TemporaryDirectory(prefix="hf_peft_suite_push_") as staging:
        for name in files:
            shutil.copy2(artifact_dir / name, Path(staging) / name)
        (Path(staging) / MODEL_CARD_NAME).write_text(model_card(results, settings.repo_id))
        message = f"{results['method']} / {results['implementation']}: accuracy " \
                  f"{_metric(results['final_metrics'].get('eval_accuracy'))} (hf_peft_suite)"
        try:
            url = upload_folder_to_hub(staging, settings, message)
        except (OSError, ValueError) as error:  # unreachable, refused (HfHubHTTPError is an OSError), invalid
            raise UsageError(
                f"pushing {artifact_dir} to {settings.repo_id!r} failed ({type(error).__name__}: {first_line(error)}); "
                f"the run is saved: push it again with `hf-peft-suite push {output_dir} --hub_model_id "
                f"{settings.repo_id}`"
            ) from None
    return {"repo_id": settings.repo_id, "url": url, "files": sorted([*files, MODEL_CARD_NAME])}
