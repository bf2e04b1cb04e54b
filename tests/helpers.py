"""Helpers shared by the tests: compare tensors, count parameters, write data files, run the CLI as a user does (in
this process or as one or two real processes), load and evaluate a finished run."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from .conftest import REPO_ROOT


def max_abs_diff(a, b) -> float:
    """The largest absolute difference between two tensors of the same shape."""
    return (a - b).abs().max().item()


def trainable(model) -> int:
    """How many parameters ``model`` trains (each shared tensor counted once, as ``model.parameters()`` yields it)."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def t5_small_on_meta():
    """t5-small's architecture (T5Config's defaults are t5-small's) without allocating its weights."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    with torch.device("meta"):
        model = T5ForConditionalGeneration(T5Config())
    assert sum(parameter.numel() for parameter in model.parameters()) == 60_506_624
    return model


# Every scratch delta, DoRA apart from LoRA (``dora``: LoRA with --lora_use_dora true): each is found by name its own
# way.
SCRATCH_DELTAS = ("prompt_tuning", "adapter", "lora", "dora", "ia3", "prefix_tuning")


def scratch_delta_model(name: str, base, tokenizer):
    """The scratch model of ``name`` (one of :data:`SCRATCH_DELTAS`) on ``base``, its delta moved off its initial
    values (so a lost or misplaced tensor shows), in eval mode."""
    import torch

    from hf_peft_suite.methods import build_method_model
    from hf_peft_suite.methods.lora import LoRAOptions

    options = LoRAOptions(lora_use_dora=True) if name == "dora" else None
    model = build_method_model(base, "lora" if name == "dora" else name, "scratch", options, tokenizer)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def loads_inside_main_process_first(monkeypatch, module, loader: str) -> list[bool]:
    """Spy on ``module.<loader>`` (a data loader): the list it returns gets, for every call, whether the call ran inside
    ``TrainingArguments.main_process_first`` (whose barriers need several processes; one process shows the nesting)."""
    import contextlib

    from hf_peft_suite.arguments import TrainingArguments

    depth, seen = [], []
    real_first, real_load = TrainingArguments.main_process_first, getattr(module, loader)

    @contextlib.contextmanager
    def first(self, *args, **kwargs):
        with real_first(self, *args, **kwargs):
            depth.append(1)
            yield
            depth.pop()

    def load(*args, **kwargs):
        seen.append(bool(depth))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(TrainingArguments, "main_process_first", first)
    monkeypatch.setattr(module, loader, load)
    return seen


def write_split_files(folder: Path, train_rows, test_rows, suffix: str = ".csv") -> Path:
    """``train<suffix>`` and ``test<suffix>`` (csv, jsonl or parquet) in ``folder`` from lists of row dicts."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_rows), ("test", test_rows)):
        frame = pd.DataFrame(rows, columns=None if rows else ["text", "label"])
        path = folder / f"{name}{suffix}"
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        elif suffix == ".jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_parquet(path)
    return folder


def cli_environment(**extra: str) -> dict[str, str]:
    """The test process's environment (offline Hub, private datasets cache) with this checkout importable."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **extra}


def run_cli(*argv, cwd=REPO_ROOT, launcher: list[str] | None = None, timeout: int = 300, **env):
    """``python run_experiment.py ARGV`` (or ``LAUNCHER run_experiment.py ARGV``) in a separate process.

    For a test about what a command does rather than about the process (its exit code through a real process, the
    console script, signals, several processes), call ``hf_peft_suite.cli.main(argv)`` in the test's process instead:
    a new process spends about 5 s importing torch and transformers before any work."""
    command = [*(launcher or [sys.executable]), "run_experiment.py", *map(str, argv)]
    return subprocess.run(command, cwd=cwd, env=cli_environment(**env), capture_output=True, text=True,
                          timeout=timeout)


# Two real processes on CPU (gloo). The evaluation set has 37 examples: with 2 processes x 8 per batch, the last round
# of batches is padded with repeated examples, which must be scored once.
DDP_EVAL_EXAMPLES, DDP_EVAL_BATCH, DDP_WORLD_SIZE = 37, 8, 2
DDP_CELL_ARGS = [
    "--max_train_samples", "512", "--max_steps", "24", "--learning_rate", "0.03",
    "--max_eval_samples", DDP_EVAL_EXAMPLES, "--per_device_eval_batch_size", DDP_EVAL_BATCH, "--eval_strategy", "steps",
    "--eval_steps", "12", "--logging_strategy", "steps", "--logging_steps", "12",
    "--group_by_length", "true",  # shuffles training batches by length; evaluation must stay in dataset order
]
ACCELERATE_CPU_CONFIG = REPO_ROOT / "configs" / "accelerate" / "cpu_2_processes.yaml"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(DDP_WORLD_SIZE)]
TWO_PROCESS_BATCH_WARNING = (  # the one line two processes print (process 0), with the tiny preset's batch of 32 each
    "warning: the global batch is 64 (32 per device x 2 processes x 1 accumulation step), not the 32 that the tiny "
    "preset's learning rate and schedule were chosen for; for the tiny preset's batch pass "
    "--per_device_train_batch_size 16")


def accelerate_launch() -> list[str]:
    """The shipped config: MULTI_GPU with use_cpu, two gloo processes (``--cpu --num_processes 2`` starts one)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CPU_CONFIG),
            "--main_process_port", str(free_port())]


def labelled_batch(tokenizer, size: int = 4, seed: int = 1):
    """``size`` tiny reviews (padded, so the masks have zeros) with their label words as ``labels``."""
    from hf_peft_suite.tiny import build_tiny_dataset

    reviews = build_tiny_dataset(num_train=size, num_test=2, seed=seed)["train"].to_dict()
    inputs = tokenizer(reviews["text"], return_tensors="pt", padding=True)
    words = ["positive" if label else "negative" for label in reviews["label"]]
    inputs["labels"] = tokenizer(words, return_tensors="pt", padding=True).input_ids
    return inputs


def eval_logits_diff(model, other, tokenizer) -> float:
    """Largest difference between two models' logits on :func:`labelled_batch`, both in eval mode."""
    import torch

    model.eval(), other.eval()
    inputs = labelled_batch(tokenizer)
    with torch.no_grad():
        return max_abs_diff(model(**inputs).logits, other(**inputs).logits)


def train_checking_frozen(model, inputs, learning_rate: float, steps: int = 8) -> list[float]:
    """AdamW on whatever requires grad (as Trainer does) for ``steps`` steps on one batch; every frozen parameter must
    come out bit-identical. Returns the losses."""
    import torch

    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen, "nothing is frozen"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    changed = [name for name, p in model.named_parameters() if name in frozen and not torch.equal(p, frozen[name])]
    assert not changed, f"frozen parameters changed: {changed[:3]}"
    return losses


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_results(output_dir: Path) -> dict:
    return json.loads((Path(output_dir) / "results.json").read_text())


def load_trained_model(output_dir: Path):
    """The trained model of a finished run, loaded from ``output_dir/model`` the way each library loads it."""
    from transformers import AutoModelForSeq2SeqLM

    import hf_peft_suite  # noqa: F401  (registers the scratch methods with the Auto classes)

    output_dir = Path(output_dir)
    results, model_dir = read_results(output_dir), output_dir / "model"
    if results["implementation"] == "scratch":
        return AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    base = AutoModelForSeq2SeqLM.from_pretrained(output_dir / "base_model")
    if (model_dir / "adapter_model.safetensors").is_file():
        from peft import PeftModel

        from hf_peft_suite.methods.prefix_tuning import fix_peft_prefix_generation

        model = PeftModel.from_pretrained(base, model_dir).eval()
        fix_peft_prefix_generation(model)  # what the model card does too (a no-op but for prefix tuning)
        return model
    import adapters

    adapters.init(base)
    base.load_adapter(str(model_dir), set_active=True, use_safetensors=True)
    return base.eval()


def evaluate_in_one_process(model, output_dir: Path, tmp_path: Path, batch_size: int):
    """Evaluate ``model`` on the run's own evaluation set in this (single) process; returns (metrics, class ids)."""
    from transformers import DataCollatorForSeq2Seq

    from hf_peft_suite import GenerationAccuracyTrainer, load_data, load_tokenizer
    from hf_peft_suite.arguments import DataArguments, TrainingArguments

    config = read_results(output_dir)["config"]
    tokenizer = load_tokenizer(config["model"]["model_name_or_path"])
    seed = config["training"]["data_seed"] if config["training"]["data_seed"] is not None else config["training"]["seed"]
    data = load_data(DataArguments(**config["data"]), tokenizer, seed=seed)
    trainer = GenerationAccuracyTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path / "evaluation"), per_device_eval_batch_size=batch_size,
                               use_cpu=True, disable_tqdm=True),
        eval_dataset=data.eval_dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
        processing_class=tokenizer,
        label_words=data.label_words,
    )
    assert trainer.args.world_size == 1
    metrics = trainer.evaluate()
    references = trainer.scorer.texts_to_ids(tokenizer.batch_decode(list(data.eval_dataset["labels"]),
                                                                     skip_special_tokens=True))
    return metrics, trainer.last_eval_class_ids, references


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file under ``folders`` with its bytes (to prove nothing was written, changed or removed)."""
    return {str(path): path.read_bytes() for folder in folders if folder.exists()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_refused(argv, message: str, capsys, *keep: Path, absent: Path | None = None) -> str:
    """``main(argv)`` exits 2 with one ``error:`` line matching ``message`` and changes nothing under ``keep``."""
    before = snapshot(*keep)
    from hf_peft_suite.cli import main

    code = main([str(item) for item in argv])
    error = capsys.readouterr().err.strip()
    assert code == 2, error
    assert len(error.splitlines()) == 1 and error.startswith("error: "), error
    assert "Traceback" not in error
    assert re.search(message, error), error
    assert snapshot(*keep) == before
    if absent is not None:
        assert not absent.exists(), f"{absent} was created"
    return error
