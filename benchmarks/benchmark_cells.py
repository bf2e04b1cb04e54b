"""Speed and memory of every cell, side by side in one run, on the t5-small architecture with real IMDB batches.

Not a test: a measurement. Each cell (method x implementation) x batch size runs in its own process, so its peak
memory is its own. All cells see the same batches: a seeded shuffled subset of real IMDB reviews, tokenized by the
project's own pipeline with the real t5-small tokenizer (max length 256), padded to the longest in each batch.

Per cell: median training-step time (forward + backward + AdamW step, after warm-up steps), peak memory (resident set
on CPU, ``torch.cuda.max_memory_allocated`` on GPU), and evaluation time per 100 examples through the project's
``GenerationAccuracyTrainer``. Then the notebook's way against ours, on the same data:

(a) evaluation: ``generate(max_length=5)`` over batches in dataset order, padded to the longest, against our sorted
    batches with ``max_new_tokens`` = longest label word; the predictions must be identical;
(b) training: random-order batches (the notebook) against length-grouped batches (``--group_by_length``).

    python benchmarks/benchmark_cells.py                      # ../shared paths, batch 8 and 32, every cell
    python benchmarks/benchmark_cells.py --batch-sizes 8 --cells lora:scratch lora:library full:scratch

Results: a table on stdout and JSON in ``benchmarks/results/`` (with the date, the hardware and the versions).
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
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT.parent / "shared" / "models" / "t5-small"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "imdb"


# ------------------------------------------------------------------------------------------------ shared helpers
def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def load_tokenized(args, num_train: int, num_eval: int):
    from transformers import AutoTokenizer

    from hf_peft_suite.arguments import DataArguments
    from hf_peft_suite.data import load_data

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = load_data(
        DataArguments(dataset_name=str(args.data), max_train_samples=num_train, max_eval_samples=num_eval,
                      max_source_length=args.max_length),
        tokenizer, seed=0,
    )
    return tokenizer, data


def batches_from(dataset, indices: list[int], batch_size: int, collator):
    rows = [dataset[i] for i in indices]
    return [collator(rows[start:start + batch_size]) for start in range(0, len(rows), batch_size)]


def time_training_steps(model, batches, warmup: int) -> list[float]:
    """Seconds per step (forward, backward, AdamW step) for each batch after the first ``warmup``."""
    import torch

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    model.train()
    times = []
    for index, batch in enumerate(batches):
        batch = {key: value.to(device()) for key, value in batch.items()}
        synchronize()
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


# ----------------------------------------------------------------------------------------------------- workers
def worker_cell(args) -> dict:
    """One cell at one batch size: step times, peak memory, eval time per 100 examples."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    from hf_peft_suite.arguments import TrainingArguments
    from hf_peft_suite.modeling import build_model, count_parameters
    from hf_peft_suite.trainer import GenerationAccuracyTrainer

    method, implementation = args.cell.split(":")
    steps = args.warmup + args.steps
    tokenizer, data = load_tokenized(args, steps * args.batch_size, args.eval_examples)
    torch.manual_seed(0)
    model, _ = build_model(str(args.model), method, implementation, tokenizer=tokenizer, random_init=True)
    model.to(device())
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    batches = batches_from(data.train_dataset, list(range(steps * args.batch_size)), args.batch_size, collator)
    times = time_training_steps(model, batches, args.warmup)
    train_peak = peak_memory_mb()

    trainer = GenerationAccuracyTrainer(
        model=model,
        args=TrainingArguments(output_dir="/tmp/hf_peft_suite_benchmark", per_device_eval_batch_size=args.eval_batch_size,
                               report_to="none", disable_tqdm=True),
        eval_dataset=data.eval_dataset, data_collator=collator, processing_class=tokenizer, label_words=data.label_words,
    )
    trainer.evaluate()  # warm-up
    metrics = trainer.evaluate()
    return {
        "cell": args.cell, "batch_size": args.batch_size,
        "median_step_s": statistics.median(times), "step_times_s": times,
        "peak_memory_mb": train_peak,
        "eval_s_per_100": metrics["eval_runtime"] * 100 / len(data.eval_dataset),
        "trainable_parameters": count_parameters(model)["trainable"],
    }


def notebook_generate(model, tokenizer, dataset, batch_size, collator):
    """The notebook's evaluation: dataset order, batches padded to the longest, ``generate(max_length=5)``."""
    import torch

    texts = []
    with torch.no_grad():
        for batch in batches_from(dataset, list(range(len(dataset))), batch_size, collator):
            generated = model.generate(input_ids=batch["input_ids"].to(device()),
                                       attention_mask=batch["attention_mask"].to(device()), max_length=5)
            texts += tokenizer.batch_decode(generated, skip_special_tokens=True)
    return texts


def worker_notebook(args) -> dict:
    """(a) evaluation the notebook's way vs ours; (b) random-order vs length-grouped training batches."""
    import torch
    from transformers import DataCollatorForSeq2Seq
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from hf_peft_suite.metrics import LabelScorer
    from hf_peft_suite.modeling import build_model

    tokenizer, data = load_tokenized(args, args.grouping_pool, args.eval_examples)
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    torch.manual_seed(0)
    model, _ = build_model(str(args.model), "full", "scratch", tokenizer=tokenizer, random_init=True)
    model.to(device()).eval()
    scorer = LabelScorer(tokenizer, data.label_words)

    # (a) The eval split as the notebook sees it: dataset order (a seeded shuffle here, like a subset of the Hub's
    # label-sorted split would be), not our longest-first order.
    shuffled = data.eval_dataset.shuffle(seed=1)
    ours_batches = batches_from(data.eval_dataset, list(range(len(data.eval_dataset))), args.eval_batch_size, collator)

    def ours():
        texts = []
        with torch.no_grad():
            for batch in ours_batches:
                generated = model.generate(input_ids=batch["input_ids"].to(device()),
                                           attention_mask=batch["attention_mask"].to(device()),
                                           max_new_tokens=scorer.max_new_tokens)
                texts += tokenizer.batch_decode(generated, skip_special_tokens=True)
        return texts

    def timed(function, repeats=2):
        function()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            synchronize()
            start = time.perf_counter()
            result = function()
            synchronize()
            best = min(best, time.perf_counter() - start)
        return best, result

    notebook_s, notebook_texts = timed(lambda: notebook_generate(model, tokenizer, shuffled, args.eval_batch_size, collator))
    ours_s, ours_texts = timed(ours)
    # Compare per example: map both back to the same example order through the input ids.
    key = lambda ids: tuple(ids)  # noqa: E731
    notebook_by_input = {key(row["input_ids"]): text for row, text in zip(shuffled, notebook_texts)}
    ours_by_input = {key(row["input_ids"]): text for row, text in zip(data.eval_dataset, ours_texts)}
    same_labels = sum(scorer.texts_to_ids([notebook_by_input[k]]) == scorer.texts_to_ids([ours_by_input[k]])
                      for k in ours_by_input)
    same_prefix_tokens = sum(
        tokenizer(notebook_by_input[k]).input_ids[: scorer.max_new_tokens - 1]
        == tokenizer(ours_by_input[k]).input_ids[: scorer.max_new_tokens - 1] for k in ours_by_input
    )

    # (b) Training throughput: random batches vs length-grouped batches, same pool, same number of batches drawn
    # uniformly from each sampler's epoch (the grouped sampler puts the longest batch first; drawing at random keeps
    # the sample representative). The padded-token share is also counted exactly over the whole epoch.
    pool = data.train_dataset
    lengths = [len(ids) for ids in pool["input_ids"]]
    generator = torch.Generator().manual_seed(0)
    random_order = torch.randperm(len(pool), generator=generator).tolist()
    grouped_order = list(LengthGroupedSampler(args.grouping_batch_size, lengths=lengths, generator=generator))

    def epoch_batches(order):
        return [order[i:i + args.grouping_batch_size] for i in range(0, len(order) - args.grouping_batch_size + 1,
                                                                   args.grouping_batch_size)]

    def padding_share(order):
        padded = real = 0
        for batch in epoch_batches(order):
            real += sum(lengths[i] for i in batch)
            padded += max(lengths[i] for i in batch) * len(batch)
        return 1 - real / padded

    rng = random.Random(0)
    results = {}
    lora, _ = build_model(str(args.model), "lora", "scratch", tokenizer=tokenizer, random_init=True)
    lora.to(device())
    for name, order in (("random", random_order), ("length_grouped", grouped_order)):
        chosen = rng.sample(epoch_batches(order), args.grouping_steps + args.warmup)
        batches = [collator([pool[i] for i in batch]) for batch in chosen]
        times = time_training_steps(lora, batches, args.warmup)
        results[name] = {"samples_per_s": args.grouping_batch_size * len(times) / sum(times),
                         "padding_share": padding_share(order)}
    return {
        "eval": {"examples": len(data.eval_dataset), "batch_size": args.eval_batch_size,
                 "notebook_s": notebook_s, "ours_s": ours_s, "speedup": notebook_s / ours_s,
                 "same_label_predictions": same_labels, "same_first_tokens": same_prefix_tokens},
        "training": {"cell": "lora:scratch", "batch_size": args.grouping_batch_size, **results,
                     "speedup": results["length_grouped"]["samples_per_s"] / results["random"]["samples_per_s"]},
    }


# ------------------------------------------------------------------------------------------------------ driver
def run_worker(args, extra: list[str]) -> dict:
    command = [sys.executable, __file__, "--worker", *extra, "--model", str(args.model), "--data", str(args.data),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--eval-examples", str(args.eval_examples),
               "--eval-batch-size", str(args.eval_batch_size), "--max-length", str(args.max_length),
               "--grouping-pool", str(args.grouping_pool), "--grouping-steps", str(args.grouping_steps),
               "--grouping-batch-size", str(args.grouping_batch_size)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def default_cells() -> list[str]:
    from hf_peft_suite.comparison import comparison_cells

    cells, _ = comparison_cells()
    return [f"{method}:{implementation}" for method, implementation in cells]


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="config + tokenizer of the base (random init)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="IMDB in Hub layout")
    parser.add_argument("--cells", nargs="+", default=None, help="method:implementation (default: every installed)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per cell")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--eval-examples", type=int, default=100)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--grouping-pool", type=int, default=2000, help="examples the two samplers draw batches from")
    parser.add_argument("--grouping-steps", type=int, default=6)
    parser.add_argument("--grouping-batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure every cell this many times, in rotating order, and keep the fastest (contention "
                             "from other processes only ever slows a run down)")
    parser.add_argument("--skip-notebook", action="store_true", help="skip the notebook comparisons")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default benchmarks/results/cells-DATE.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--notebook", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        sys.path.insert(0, str(REPO_ROOT))
        result = worker_notebook(args) if args.notebook else worker_cell(args)
        print(json.dumps(result))
        return 0

    for path in (args.model, args.data):
        if not path.exists():
            print(f"error: {path} does not exist; give --model and --data (see ../shared/README.md)", file=sys.stderr)
            return 2
    sys.path.insert(0, str(REPO_ROOT))
    cells = args.cells or default_cells()
    started = datetime.now(timezone.utc)
    rows = []
    for batch_size in args.batch_sizes:
        runs: dict[str, list[dict]] = {cell: [] for cell in cells}
        for repeat in range(args.repeats):
            order = cells[repeat % len(cells):] + cells[:repeat % len(cells)]
            for cell in order:
                print(f"measuring {cell} at batch {batch_size} (run {repeat + 1}/{args.repeats}) ...", flush=True)
                runs[cell].append(run_worker(args, ["--cell", cell, "--batch-size", str(batch_size)]))
        for cell in cells:
            good = [run for run in runs[cell] if "error" not in run]
            if not good:
                rows.append({"cell": cell, "batch_size": batch_size, "error": runs[cell][0]["error"]})
                continue
            fastest = min(good, key=lambda run: run["median_step_s"])
            rows.append({**fastest, "cell": cell, "batch_size": batch_size,
                         "median_step_s_per_run": [run["median_step_s"] for run in good],
                         "peak_memory_mb": min(run["peak_memory_mb"] for run in good),
                         "eval_s_per_100": min(run["eval_s_per_100"] for run in good)})
    notebook = None if args.skip_notebook else run_worker(args, ["--notebook"])
    report = summarize(rows, notebook)
    from hf_peft_suite.experiment import library_versions

    output = {"started_at": started.isoformat(timespec="seconds"), "hardware": hardware(),
              "versions": library_versions(), "settings": {k: str(v) for k, v in vars(args).items()},
              "cells": rows, "notebook": notebook, "summary": report}
    path = args.output or REPO_ROOT / "benchmarks" / "results" / f"cells-{started:%Y%m%d-%H%M}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output, indent=2) + "\n")
    print(f"\nwritten {path}")
    return 0


def summarize(rows: list[dict], notebook: dict | None) -> dict:
    """Print the table with ratios to full fine-tuning and scratch/library ratios; return the ratios."""
    summary = {"vs_full": {}, "scratch_vs_library": {}}
    print(f"\n{'cell':<24}{'batch':>6}{'step s':>9}{'x full':>8}{'peak MB':>10}{'x full':>8}{'eval s/100':>11}")
    for row in rows:
        if "error" in row:
            print(f"{row['cell']:<24}{row['batch_size']:>6}  FAILED: {row['error']}")
            continue
        full = next((r for r in rows if r["cell"] == "full:scratch" and r["batch_size"] == row["batch_size"]
                     and "error" not in r), None)
        step_ratio = row["median_step_s"] / full["median_step_s"] if full else float("nan")
        memory_ratio = row["peak_memory_mb"] / full["peak_memory_mb"] if full else float("nan")
        summary["vs_full"][f"{row['cell']}@{row['batch_size']}"] = {"step": step_ratio, "memory": memory_ratio}
        print(f"{row['cell']:<24}{row['batch_size']:>6}{row['median_step_s']:>9.3f}{step_ratio:>8.2f}"
              f"{row['peak_memory_mb']:>10.0f}{memory_ratio:>8.2f}{row['eval_s_per_100']:>11.2f}")
    print(f"\n{'scratch / library':<24}{'batch':>6}{'step':>8}{'memory':>8}")
    for row in rows:
        method, implementation = row["cell"].split(":")
        if implementation != "scratch" or "error" in row:
            continue
        twin = next((r for r in rows if r["cell"] == f"{method}:library" and r["batch_size"] == row["batch_size"]
                     and "error" not in r), None)
        if twin:
            ratios = {"step": row["median_step_s"] / twin["median_step_s"],
                      "memory": row["peak_memory_mb"] / twin["peak_memory_mb"]}
            summary["scratch_vs_library"][f"{method}@{row['batch_size']}"] = ratios
            print(f"{method:<24}{row['batch_size']:>6}{ratios['step']:>8.3f}{ratios['memory']:>8.3f}")
    if notebook and "error" not in notebook:
        evaluation, training = notebook["eval"], notebook["training"]
        print(f"\nevaluation of {evaluation['examples']} examples: notebook {evaluation['notebook_s']:.2f} s, ours "
              f"{evaluation['ours_s']:.2f} s ({evaluation['speedup']:.2f}x); same label predictions "
              f"{evaluation['same_label_predictions']}/{evaluation['examples']}")
        print(f"training, batch {training['batch_size']}: random order {training['random']['samples_per_s']:.2f} "
              f"samples/s (padding {training['random']['padding_share']:.1%}), length-grouped "
              f"{training['length_grouped']['samples_per_s']:.2f} samples/s (padding "
              f"{training['length_grouped']['padding_share']:.1%}): {training['speedup']:.2f}x")
    elif notebook:
        print(f"\nnotebook comparison FAILED: {notebook['error']}")
    return summary


if __name__ == "__main__":
    sys.exit(main())
