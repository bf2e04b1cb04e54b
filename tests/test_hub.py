"""``--push_to_hub`` and ``hf-peft-suite push`` for every cell: exactly the trained delta, its config and a model card,
loadable as the card says.

The Hub is unreachable here, so the one function that talks to it, ``hf_peft_suite.hub.upload_folder_to_hub``, is
replaced by a fake that keeps a copy of the folder it is handed (the only fake in these tests). Everything else is
real: the run, the file selection, the model card. The model is then loaded from that copy by executing the card's
own loading code, and must make the same prediction on every evaluation example as the trained run did.

Every cell's finished run (the session's ``finished_runs``, copied) is pushed with ``hf-peft-suite push``; both that
command and ``--push_to_hub`` after training push through ``hub.push_run``, which is what depends on the cell. The
training-time path (the push at the end of a run, and the local card naming the Hub repository) is the same for every
cell: it is run for a whole model and for a library delta.
"""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest

from hf_peft_suite import hub
from hf_peft_suite.arguments import load_preset
from hf_peft_suite.cli import main
from hf_peft_suite.experiment import run_experiment
from hf_peft_suite.methods import METHODS
from hf_peft_suite.weights import tensor_shapes

from .conftest import ALL_CELLS, cell_param
from .helpers import evaluate_in_one_process, read_results

# The tiny preset's per-method rates where it has one (0.3 for a prompt, 0.1 for (IA)³ vectors), else 0.01.
TINY_RATES = {method: settings["learning_rate"] for method, settings in load_preset("tiny")["per_method"].items()
              if "learning_rate" in settings}
TOKEN = "hf_test_token_not_a_real_one"
FILES = {
    "full": {"README.md", "config.json", "generation_config.json", "model.safetensors"},
    "scratch": {"README.md", "config.json", "model.safetensors"},
    "peft": {"README.md", "adapter_config.json", "adapter_model.safetensors"},
    "adapters": {"README.md", "adapter_config.json", "adapter.safetensors"},
}
LOADING_LINE = {
    "scratch": 'model = AutoModelForSeq2SeqLM.from_pretrained("{repo}", base_model=base)',
    "full": 'model = AutoModelForSeq2SeqLM.from_pretrained("{repo}")',
    "peft": 'model = PeftModel.from_pretrained(base, "{repo}")',
    "adapters": 'base.load_adapter("{repo}", set_active=True, use_safetensors=True)',
}
CELLS = [cell_param(*cell) for cell in ALL_CELLS]


@pytest.fixture
def fake_upload(monkeypatch, tmp_path):
    """Replace only the upload: keep a copy of the folder and what it was pushed with."""
    uploads = []

    def upload(folder, settings, commit_message):
        copy = tmp_path / f"pushed-{len(uploads)}"
        shutil.copytree(folder, copy)
        uploads.append({"folder": copy, "settings": settings, "message": commit_message})
        return f"https://huggingface.co/{settings.repo_id}"

    monkeypatch.setattr(hub, "upload_folder_to_hub", upload)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return uploads


def kind_of(method: str, implementation: str) -> str:
    if implementation == "scratch":
        return "full" if method == "full" else "scratch"
    return METHODS[method].library_module


def check_push(uploads, output_dir, results, repo, tmp_path) -> str:
    """One upload of exactly the cell's files, recorded in results.json, whose card loads a model that predicts every
    evaluation example as the run did. Returns the pushed card."""
    method, implementation = results["method"], results["implementation"]
    assert len(uploads) == 1
    upload, kind = uploads[0], kind_of(method, implementation)
    pushed = upload["folder"]
    assert {path.name for path in pushed.iterdir()} == FILES[kind]
    assert upload["settings"].repo_id == repo and upload["settings"].token == TOKEN
    assert results["hub"] == {"repo_id": repo, "url": f"https://huggingface.co/{repo}", "files": sorted(FILES[kind])}
    assert read_results(output_dir)["hub"] == results["hub"]
    weights = sum(math.prod(shape) for path in pushed.glob("*.safetensors") for shape in tensor_shapes(str(path)).values())
    assert weights == results["parameters"]["trainable"]  # the trained delta, nothing of the frozen base

    card = (pushed / "README.md").read_text()
    parameters = results["parameters"]
    for fact in (f"`{method}`", f"`{implementation}`", "`builtin:tiny-t5` (random weights)", "`builtin:tiny-sentiment`",
                 f"{results['final_metrics']['eval_accuracy']:.4f}", f"{parameters['trainable']:,} of "
                 f"{parameters['total']:,}", "import hf_peft_suite", LOADING_LINE[kind].format(repo=repo)):
        assert fact in card, fact

    # Load it the way the card says, from the pushed files, and predict every evaluation example as the run did.
    code = re.search(r"```python\n(.*?)```", card, flags=re.S).group(1).replace(f'"{repo}"', f'"{pushed}"')
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    metrics, predicted, _ = evaluate_in_one_process(namespace["model"].eval(), output_dir, tmp_path, batch_size=32)
    trained = json.loads((output_dir / "eval_predictions.json").read_text())
    assert predicted["predictions"] == trained["predictions"]
    assert metrics["eval_accuracy"] == results["final_metrics"]["eval_accuracy"]
    assert results["final_metrics"]["eval_invalid_rate"] < 1.0  # the delta matters: the tiny base writes no label
    return card


@pytest.mark.slow
@pytest.mark.parametrize(("method", "implementation"), CELLS)
def test_push_sends_only_the_delta_its_config_and_a_card_that_loads_it(method, implementation, finished_runs,
                                                                       copy_run, fake_upload, tmp_path, capsys):
    repo = f"tester/tiny-{method}-{implementation}"
    output_dir = copy_run(finished_runs[(method, implementation)], "run")
    assert main(["push", str(output_dir), "--hub_model_id", repo]) == 0
    results = read_results(output_dir)
    assert f"to https://huggingface.co/{repo}" in capsys.readouterr().out
    check_push(fake_upload, output_dir, results, repo, tmp_path)


@pytest.mark.slow  # (trains runs of its own)
@pytest.mark.parametrize(("method", "implementation"), [("full", "scratch"), ("lora", "library")])
def test_push_to_hub_after_training_pushes_the_run_and_the_local_card_is_the_hubs(method, implementation, fake_upload,
                                                                                 tmp_path):
    repo = f"tester/tiny-{method}-{implementation}"
    output_dir = tmp_path / "run"
    results = run_experiment(
        preset="tiny", method=method, implementation=implementation, max_train_samples=512, max_steps=24,
        learning_rate=TINY_RATES.get(method, 0.01), max_eval_samples=32, eval_strategy="no",
        output_dir=str(output_dir), push_to_hub=True, hub_model_id=repo,
    )
    card = check_push(fake_upload, output_dir, results, repo, tmp_path)
    assert card == (output_dir / "model" / "README.md").read_text()  # the local copy of the card is the same


def test_push_needs_a_token_and_a_valid_repository_id_before_training(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored login either
    code = main(["--preset", "tiny", "--output_dir", str(tmp_path / "out"), "--push_to_hub", "--hub_model_id", "me/x"])
    assert code == 2 and "needs a Hugging Face token" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code = main(["--preset", "tiny", "--output_dir", str(tmp_path / "out"), "--push_to_hub", "--hub_model_id", "a/b/c"])
    assert code == 2 and "is not a valid repository id" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failed_upload_keeps_the_run_and_says_how_to_push_it_again(monkeypatch, tmp_path, capsys):
    def unreachable(folder, settings, commit_message):
        raise ConnectionError("huggingface.co is unreachable")

    monkeypatch.setattr(hub, "upload_folder_to_hub", unreachable)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    output_dir = tmp_path / "run"
    code = main(["--preset", "tiny", "--max_steps", "2", "--max_eval_samples", "8", "--output_dir", str(output_dir),
                 "--push_to_hub", "--hub_model_id", "me/tiny"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.splitlines() == [error]
    assert f"the run is saved: push it again with `hf-peft-suite push {output_dir} --hub_model_id me/tiny`" in error
    assert (output_dir / "results.json").is_file() and "hub" not in json.loads((output_dir / "results.json").read_text())

    uploads = []
    monkeypatch.setattr(hub, "upload_folder_to_hub", lambda folder, settings, message: uploads.append(
        sorted(path.name for path in __import__("pathlib").Path(folder).iterdir())) or "https://hub/me/tiny")
    assert main(["push", str(output_dir), "--hub_model_id", "me/tiny"]) == 0
    assert uploads == [sorted(FILES["full"])]


@pytest.mark.parametrize(
    ("method", "implementation", "lines"),
    [
        ("lora", "scratch", ['model = AutoModelForSeq2SeqLM.from_pretrained("me/x")']),
        ("full", "scratch", ['model = AutoModelForSeq2SeqLM.from_pretrained("me/x")']),
        ("lora", "library", ['base = AutoModelForSeq2SeqLM.from_pretrained("t5-small")',
                             'model = PeftModel.from_pretrained(base, "me/x")']),
        ("adapter", "library", ['base = AutoModelForSeq2SeqLM.from_pretrained("t5-small")', "adapters.init(base)",
                                'base.load_adapter("me/x", set_active=True, use_safetensors=True)']),
    ],
)
def test_a_card_for_a_pretrained_hub_base_loads_the_base_by_name(method, implementation, lines):
    """With t5-small from the Hub, the delta's config names its base: one from_pretrained line loads a scratch cell."""
    results = {
        "method": method, "implementation": implementation, "model_name_or_path": "t5-small", "random_init": False,
        "dataset_name": "imdb", "label_words": ["negative", "positive"], "max_new_tokens": 2,
        "num_train_examples": 25_000, "num_eval_examples": 25_000, "learning_rate": 5e-4, "world_size": 1,
        "final_metrics": {"eval_accuracy": 0.9, "eval_macro_f1": 0.9, "eval_invalid_rate": 0.0},
        "best_accuracy": 0.9, "best_epoch": 3.0, "versions": {"torch": "2.13"},
        "parameters": {"total": 60_801_536, "trainable": 294_912, "trainable_percent": 0.485},
        "config": {"model": {"random_init": False, "tokenizer_name_or_path": None},
                   "training": {"seed": 42}, "data": {"max_source_length": 256, "clean_text": True}},
    }
    card = hub.model_card(results, "me/x")
    code = re.search(r"```python\n(.*?)```", card, flags=re.S).group(1).splitlines()
    assert all(line in code for line in lines)
    assert 'tokenizer = AutoTokenizer.from_pretrained("t5-small")' in code
    assert "base_model: t5-small" in card and "datasets: [imdb]" in card
    assert "294,912 of 60,801,536" in card and "0.9000" in card
