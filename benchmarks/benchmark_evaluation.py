"""What a user waits for, side by side in one run: evaluation and training, against the plain code a user would write.

Not a test: a measurement. On the t5-small architecture (random weights from ``../shared/models/t5-small``, LoRA with
peft on q and v, as a finished run is) and the same 512 IMDB test reviews (``../shared/data/imdb``, a seeded shuffled
subset, cleaned and truncated to 256 tokens by the project's pipeline), batch 32:

1. **the notebook's loop** (the baseline): a DataLoader over the reviews in dataset order, padding to the longest of
   each batch, ``model.generate(max_length=5)``, decode, compare with the label words;
2. **``trainer.evaluate()``**, the whole call (``GenerationAccuracyTrainer``: length-sorted batches, one encoder pass
   per batch, ``eval_loss`` included), fp32;
3. **the ``evaluate`` command**, the whole command in a fresh process (``run_experiment.py evaluate RUN_DIR``:
   start-up, imports, loading the run and the data, evaluating, writing), fp32;
4. **the floors**: a bare encoder forward over the same (sorted) batches, and ``generate`` alone over them (the
   encoder plus the decoder's steps, whose cross-attention projects every encoder state again);
5. **``trainer.evaluate()`` under ``--bf16``** (CPU autocast), against the fp32 notebook loop; and how many
   predictions bf16 changes on a *trained* tiny LoRA run (the random t5-small writes no label word at all);
6. **training**: a ``GenerationAccuracyTrainer`` step against a plain PyTorch loop's step (forward, backward, AdamW)
   on the same batches in the same order, for full fine-tuning and LoRA (scratch).

The variants run interleaved in rounds after a warm-up (see ``worker``); every ratio is the median over rounds of
two calls made in the same round, every time the fastest call. Run it on a quiet machine. The first generated ids of (1) and (2) must be identical for every review.

    python benchmarks/benchmark_evaluation.py                         # ../shared paths, everything (about 10 min here)
    python benchmarks/benchmark_evaluation.py --skip-command --skip-training --repeats 1

Results: a table on stdout and JSON in ``benchmarks/results/evaluation-<device>.json`` (date, hardware, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT.parent / "shared" / "models" / "t5-small"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "imdb"
sys.path.insert(0, str(REPO_ROOT))


def make_run(args, root: Path) -> Path:
    """A finished LoRA (peft) run on random t5-small, as the evaluate command and load_run see one."""
    from hf_peft_suite import run_experiment

    run_dir = root / "lora-peft"
    run_experiment(model_name_or_path=str(args.model), random_init=True, dataset_name=str(args.data),
                   method="lora", implementation="library", max_train_samples=8, max_eval_samples=8, max_steps=1,
                   per_device_train_batch_size=8, per_device_eval_batch_size=args.batch_size, max_source_length=256,
                   output_dir=str(run_dir), use_cpu=True, disable_tqdm=True, seed=42)
    return run_dir


def eval_trainer(run, data, batch_size: int, bf16: bool, output_dir: Path):
    from transformers import DataCollatorForSeq2Seq

    from hf_peft_suite.arguments import TrainingArguments
    from hf_peft_suite.trainer import GenerationAccuracyTrainer

    return GenerationAccuracyTrainer(
        model=run.model, args=TrainingArguments(output_dir=str(output_dir), per_device_eval_batch_size=batch_size,
                                                bf16=bf16, use_cpu=True, report_to="none", disable_tqdm=True),
        eval_dataset=data.eval_dataset, processing_class=run.tokenizer, label_words=run.label_words,
        data_collator=DataCollatorForSeq2Seq(run.tokenizer, label_pad_token_id=-100),
    )


def evaluation_variants(args, run, data, root: Path) -> dict:
    """The evaluation variants, each a function returning ``(first generated ids per review or None, extra)``."""
    import torch
    from transformers import DataCollatorWithPadding

    model, tokenizer, words = run.model, run.tokenizer, run.label_words
    sources = [{"input_ids": ids} for ids in data.eval_dataset["input_ids"]]
    order = list(range(len(sources)))
    random.Random(1).shuffle(order)  # the notebook sees the reviews in dataset order, not sorted by length
    pad = DataCollatorWithPadding(tokenizer)
    notebook_batches = [pad([sources[i] for i in order[start:start + args.batch_size]])
                        for start in range(0, len(order), args.batch_size)]
    sorted_batches = [pad(sources[start:start + args.batch_size]) for start in range(0, len(sources), args.batch_size)]

    @torch.no_grad()
    def notebook():
        generated, valid = [], 0
        for batch in notebook_batches:
            output = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_length=5)
            texts = tokenizer.batch_decode(output, skip_special_tokens=True)
            generated += [row[1:3].tolist() for row in output]  # the first two generated ids (after the start id)
            valid += sum(text.strip() in words for text in texts)  # compared with the label words, as the notebook does
        by_review = [None] * len(order)
        for position, index in enumerate(order):
            by_review[index] = generated[position]
        return by_review, {"notebook_valid_outputs": valid}

    @torch.no_grad()
    def encoder_floor():
        for batch in sorted_batches:
            model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return None, {}

    @torch.no_grad()
    def generate_floor():  # what any evaluation must compute: the encoder and the decoder's first steps
        for batch in sorted_batches:
            model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           max_new_tokens=run.scorer.max_new_tokens)
        return None, {}

    def ours(bf16: bool):
        trainer = eval_trainer(run, data, args.batch_size, bf16, root / "trainer")  # built once, as a run does
        captured, original = [], trainer.prediction_step

        def keep_ids(*step_args, **step_kwargs):
            loss, (generated, losses), labels = original(*step_args, **step_kwargs)
            captured.extend(row[1:3].tolist() for row in generated)
            return loss, (generated, losses), labels

        trainer.prediction_step = keep_ids

        def call():  # the whole evaluate() call
            captured.clear()
            metrics = trainer.evaluate()
            return list(captured), {"eval_loss": metrics["eval_loss"], "eval_num_scored": metrics["eval_num_scored"]}
        return call

    variants = {"notebook": lambda: notebook, "trainer_evaluate": lambda: ours(False),
                "trainer_evaluate_bf16": lambda: ours(True), "encoder_floor": lambda: encoder_floor,
                "generate_floor": lambda: generate_floor}
    return variants


def worker(args) -> None:
    """A group of evaluation variants in one fresh process, interleaved: each warmed up once, then ``--repeats``
    rounds that run every variant in turn, so that each round's ratios compare calls made a minute apart (this
    machine's speed drifts by 20% over minutes: variants timed one after another in separate processes gave
    notebook/evaluate ratios from 1.2 to 1.5 between runs). Prints its JSON."""
    from hf_peft_suite import load_run
    from hf_peft_suite.arguments import DataArguments
    from hf_peft_suite.data import load_eval_data
    from hf_peft_suite.quiet import apply_library_output

    apply_library_output(verbose=False)
    run = load_run(args.run_dir, device="cpu")
    data = load_eval_data(DataArguments(dataset_name=str(args.data), max_eval_samples=args.examples,
                                        max_source_length=256), run.tokenizer, run.label_words, seed=42)
    variants = evaluation_variants(args, run, data, Path(tempfile.mkdtemp()))
    functions = {name: variants[name]() for name in args.worker.split(",")}
    record = {name: {"seconds": []} for name in functions}
    for name, function in functions.items():  # warm-up: every shape seen once (the whole of a --cold worker)
        record[name]["ids"], extra = function()
        record[name].update(extra)
    if args.cold:
        return
    for _ in range(args.repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            record[name]["seconds"].append(time.perf_counter() - start)
    print("RESULT " + json.dumps(record))


def measure_evaluation(args, run_dir: Path) -> dict:
    """(1), (2), (4), (5): the fp32 variants interleaved in one process, bf16 interleaved with the notebook loop in
    another (so no fp32 call runs beside a bf16 trainer). Each ratio is the median over rounds of notebook / variant
    in the same round; each time is the fastest call."""
    groups = ("notebook,trainer_evaluate,generate_floor,encoder_floor", "notebook,trainer_evaluate_bf16")
    results, ids = {}, {}
    for group in groups:
        command = [sys.executable, __file__, "--worker", group, "--run-dir", str(run_dir), "--data", str(args.data),
                   "--examples", str(args.examples), "--batch-size", str(args.batch_size), "--repeats",
                   str(args.repeats)]
        output = subprocess.run(command, check=True, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}).stdout
        record = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])
        notebook = record.pop("notebook")
        suffix = "" if group == groups[0] else "_beside_bf16"
        results[f"notebook{suffix}_s"] = min(notebook["seconds"])
        ids.setdefault("notebook", notebook["ids"])
        for name, measured in record.items():
            results[f"{name}_s"] = min(measured["seconds"])
            results[f"{name}_rounds_s"] = measured["seconds"]
            results[f"notebook_over_{name}"] = statistics.median(
                before / after for before, after in zip(notebook["seconds"], measured["seconds"]))
            ids[name] = measured.pop("ids")
            results.update({key: value for key, value in measured.items() if key != "seconds"})
        results[f"notebook{suffix}_rounds_s"] = notebook["seconds"]
    results["notebook_valid_outputs"] = notebook["notebook_valid_outputs"]
    results["evaluate_over_encoder_floor"] = statistics.median(
        a / b for a, b in zip(results["trainer_evaluate_rounds_s"], results["encoder_floor_rounds_s"]))
    results["evaluate_over_generate_floor"] = statistics.median(
        a / b for a, b in zip(results["trainer_evaluate_rounds_s"], results["generate_floor_rounds_s"]))
    results["ids_identical"] = ids["trainer_evaluate"] == ids["notebook"]
    results["ids_compared"] = len(ids["notebook"])
    results["bf16_first_ids_changed"] = sum(a != b for a, b in zip(ids["trainer_evaluate_bf16"],
                                                                    ids["trainer_evaluate"]))
    return results


def measure_command(args, run_dir: Path, root: Path) -> dict:
    """(3): the whole ``evaluate`` command in a fresh process, against the whole notebook script in a fresh process
    (load the run and the reviews, one cold pass of the notebook's loop), alternating, each timed from outside."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    notebook_script = [sys.executable, __file__, "--worker", "notebook", "--cold", "--run-dir", str(run_dir),
                       "--data", str(args.data), "--examples", str(args.examples), "--batch-size", str(args.batch_size)]
    times = {"evaluate_command": [], "notebook_script": []}
    for repeat in range(args.repeats):
        output_dir = root / f"command-{repeat}"
        evaluate_command = [sys.executable, str(REPO_ROOT / "run_experiment.py"), "evaluate", str(run_dir),
                            "--output_dir", str(output_dir), "--max_eval_samples", str(args.examples),
                            "--per_device_eval_batch_size", str(args.batch_size)]
        for name, command in (("evaluate_command", evaluate_command), ("notebook_script", notebook_script)):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, text=True, env=environment)
            times[name].append(time.perf_counter() - start)
        inside = json.loads((output_dir / "eval_results.json").read_text())["eval_runtime"]
    return {"evaluate_command_s": min(times["evaluate_command"]), "evaluate_command_eval_runtime_s": inside,
            "notebook_script_s": min(times["notebook_script"]),
            "notebook_script_over_evaluate_command": statistics.median(
                a / b for a, b in zip(times["notebook_script"], times["evaluate_command"]))}


def bf16_on_a_trained_tiny_run(root: Path) -> dict:
    """(5), the second half: predictions that change under bf16 on a trained tiny LoRA run (400 reviews)."""
    from hf_peft_suite import evaluate_run, run_experiment

    run_dir = root / "tiny-lora"
    run_experiment(preset="tiny", method="lora", output_dir=str(run_dir))
    fp32 = evaluate_run(run_dir, output_dir=root / "tiny-fp32")
    bf16 = evaluate_run(run_dir, output_dir=root / "tiny-bf16", bf16=True)
    first, second = (json.loads((root / name / "eval_predictions.json").read_text())["predictions"]
                     for name in ("tiny-fp32", "tiny-bf16"))
    return {"tiny_examples": len(first), "tiny_predictions_changed_by_bf16": sum(a != b for a, b in zip(first, second)),
            "tiny_accuracy_fp32": fp32["eval_accuracy"], "tiny_accuracy_bf16": bf16["eval_accuracy"]}


def measure_training(args, tokenizer, method: str) -> dict:
    """(6): Trainer step against a plain loop's step, same batches in the same order, after warm-up steps."""
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import DataCollatorForSeq2Seq, TrainerCallback

    from hf_peft_suite.arguments import DataArguments, TrainingArguments
    from hf_peft_suite.data import load_data
    from hf_peft_suite.modeling import build_model
    from hf_peft_suite.trainer import GenerationAccuracyTrainer

    steps = args.warmup + args.steps
    data = load_data(DataArguments(dataset_name=str(args.data), max_train_samples=steps * args.train_batch_size,
                                   max_eval_samples=8, max_source_length=256), tokenizer, seed=42)
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    rows = [data.train_dataset[i] for i in range(len(data.train_dataset))]
    batches = [collator(rows[i:i + args.train_batch_size]) for i in range(0, len(rows), args.train_batch_size)]

    def fresh_model():
        torch.manual_seed(0)
        return build_model(str(args.model), method, "scratch", tokenizer=tokenizer, random_init=True)[0]

    def plain_loop() -> list[float]:
        model = fresh_model().train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        times = []
        for batch in batches:
            start = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        return times[args.warmup:]

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, *unused, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, *unused, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    class InOrder(GenerationAccuracyTrainer):
        def _get_train_sampler(self, *unused, **kwargs):
            return SequentialSampler(self.train_dataset)

    def trainer_steps(clip: float) -> list[float]:
        timer = StepTimes()
        trainer = InOrder(
            model=fresh_model(), args=TrainingArguments(
                output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.train_batch_size, max_steps=steps,
                learning_rate=1e-4, lr_scheduler_type="constant", eval_strategy="no", save_strategy="no",
                logging_strategy="no", max_grad_norm=clip, use_cpu=True, report_to="none", disable_tqdm=True,
                optim="adamw_torch"),
            train_dataset=data.train_dataset, data_collator=collator, processing_class=tokenizer,
            label_words=data.label_words, callbacks=[timer])
        trainer.train()
        return timer.times[args.warmup:]

    best = {"plain": float("inf"), "trainer": float("inf"), "trainer_no_clip": float("inf")}
    for _ in range(args.repeats):
        best["plain"] = min(best["plain"], statistics.median(plain_loop()))
        best["trainer"] = min(best["trainer"], statistics.median(trainer_steps(1.0)))
        best["trainer_no_clip"] = min(best["trainer_no_clip"], statistics.median(trainer_steps(0.0)))
    return {f"{method}_{key}_step_s": value for key, value in best.items()}


def environment() -> dict:
    import torch
    import transformers

    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu",
            "load_average": os.getloadavg()}


def table(results: dict) -> str:
    """Seconds are the fastest call; "speed vs notebook" is the median over rounds of notebook / variant."""
    def ratio(name):
        return f"{results[f'notebook_over_{name}']:.2f}x"

    rows = [
        ("notebook loop (fp32)", results["notebook_s"], "1.00x", ""),
        ("trainer.evaluate() (fp32)", results["trainer_evaluate_s"], ratio("trainer_evaluate"),
         ">= 1.25x faster than the notebook"),
        ("bare encoder forward (floor)", results["encoder_floor_s"], ratio("encoder_floor"),
         f"evaluate / floor = {results['evaluate_over_encoder_floor']:.3f} (<= 1.15)"),
        ("generate alone, sorted batches (what any evaluation computes)", results["generate_floor_s"],
         ratio("generate_floor"), f"evaluate / generate = {results['evaluate_over_generate_floor']:.3f}"),
        ("trainer.evaluate() (--bf16), against the fp32 notebook loop in its own process",
         results["trainer_evaluate_bf16_s"], ratio("trainer_evaluate_bf16"), ">= 2x faster than the fp32 notebook"),
    ]
    if "evaluate_command_s" in results:
        rows.append(("evaluate command, whole, against the notebook script, whole (both fresh processes)",
                     results["evaluate_command_s"], f"{results['notebook_script_over_evaluate_command']:.2f}x",
                     f"notebook script {results['notebook_script_s']:.1f} s; evaluation inside the command "
                     f"{results['evaluate_command_eval_runtime_s']:.1f} s"))
    lines = [f"| what ({results['examples']} IMDB reviews, batch {results['batch_size']}) | seconds | speed vs notebook "
             "| target / note |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {seconds:.2f} | {ratio} | {note} |" for name, seconds, ratio, note in rows]
    for method in ("full", "lora"):
        if f"{method}_plain_step_s" in results:
            plain = results[f"{method}_plain_step_s"]
            lines.append(f"| training step, {method}: plain loop / Trainer / Trainer without clipping | "
                         f"{plain:.3f} / {results[f'{method}_trainer_step_s']:.3f} / "
                         f"{results[f'{method}_trainer_no_clip_step_s']:.3f} | "
                         f"{results[f'{method}_trainer_step_s'] / plain:.3f}x / "
                         f"{results[f'{method}_trainer_no_clip_step_s'] / plain:.3f}x | <= 1.03x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--skip-command", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for path in (args.model, args.data):
        if not path.exists():
            sys.exit(f"error: {path} does not exist; give --model and --data (see the docstring)")

    from hf_peft_suite import load_run
    from hf_peft_suite.quiet import apply_library_output

    apply_library_output(verbose=False)
    if args.worker:
        worker(args)
        return
    root = Path(tempfile.mkdtemp(prefix="hf_peft_suite_benchmark_"))
    run_dir = make_run(args, root)
    results = {"environment": environment(), "examples": args.examples, "batch_size": args.batch_size}
    results.update(measure_evaluation(args, run_dir))
    if not args.skip_command:
        results.update(measure_command(args, run_dir, root))
    results.update(bf16_on_a_trained_tiny_run(root))
    if not args.skip_training:
        tokenizer = load_run(run_dir, device="cpu").tokenizer
        for method in ("full", "lora"):
            results.update(measure_training(args, tokenizer, method))
    results["environment"]["load_average_after"] = os.getloadavg()
    print(table(results))
    print(json.dumps({key: value for key, value in results.items() if key != "environment"}, indent=2))
    output = args.output or REPO_ROOT / "benchmarks" / "results" / f"evaluation-{results['environment']['device']}.json"
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {output}")


if __name__ == "__main__":
    main()
