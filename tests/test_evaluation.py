"""Evaluation: one encoder pass per batch gives exactly what Seq2SeqTrainer's two passes gave, for every cell."""

from __future__ import annotations

import pytest
import torch
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer

from hf_peft_suite.arguments import TrainingArguments
from hf_peft_suite.data import load_data
from hf_peft_suite.methods import METHODS, build_method_model
from hf_peft_suite.one_pass import reusable
from hf_peft_suite.tiny import TINY_DATASET_NAME, build_tiny_model
from hf_peft_suite.trainer import GenerationAccuracyTrainer

from .conftest import ALL_CELLS, cell_param, requires_cpu_bf16, requires_no_gpu

SMALL_OPTIONS = {"prompt_tuning": {"num_virtual_tokens": 4}, "adapter": {"adapter_reduction_factor": 4},
                 "lora": {"lora_r": 4}, "prefix_tuning": {"prefix_num_virtual_tokens": 4}}


def cells():
    return [cell_param(*cell) for cell in ALL_CELLS]


def build_cell(method: str, implementation: str, tokenizer):
    """A tiny cell whose trainable weights are random (not their no-op init), so its outputs mean something."""
    chosen = METHODS[method]
    options = chosen.options(**SMALL_OPTIONS.get(method, {})) if chosen.options else None
    model = build_method_model(build_tiny_model(seed=0), method, implementation, options, tokenizer)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad and method != "full":
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


class TwoPassTrainer(GenerationAccuracyTrainer):
    """What evaluation did before: Seq2SeqTrainer's prediction step (generate, then a full forward for the loss)."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        return Seq2SeqTrainer.prediction_step(self, model, inputs, prediction_loss_only, ignore_keys, **gen_kwargs)


def count_encoder_calls(model) -> list[int]:
    calls = [0]
    model.get_encoder().register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.fixture(scope="module")
def data(tiny_tokenizer):
    return load_data(dataset_name=TINY_DATASET_NAME, tokenizer=tiny_tokenizer, max_source_length=64,
                     max_eval_samples=45, max_train_samples=8)


def trainer_for(cls, model, data, tokenizer, tmp_path):
    return cls(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=8, use_cpu=True,
                               disable_tqdm=True, report_to="none"),
        eval_dataset=data.eval_dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
        processing_class=tokenizer,
        label_words=data.label_words,
    )


@pytest.mark.parametrize(("method", "implementation"), cells())
def test_one_encoder_pass_gives_the_two_pass_predictions_and_loss(method, implementation, data, tiny_tokenizer,
                                                                   tmp_path, monkeypatch):
    from hf_peft_suite import one_pass as one_pass_module
    from hf_peft_suite import trainer as trainer_module

    model = build_cell(method, implementation, tiny_tokenizer)
    batches = -(-len(data.eval_dataset) // 8)  # 45 examples, batches of 8: 6 batches, the last one of 5
    reused = []  # the loss pass starts from generate's cross-attention keys and values, in every batch
    monkeypatch.setattr(trainer_module, "reusable_cross_attention",
                        lambda *a: reused.append(one_pass_module.reusable_cross_attention(*a)) or reused[-1])

    calls = count_encoder_calls(model)
    one_pass = trainer_for(GenerationAccuracyTrainer, model, data, tiny_tokenizer, tmp_path / "one")
    metrics = one_pass.evaluate()
    if reusable(model):
        assert calls[0] == batches
        assert len(reused) == batches and all(cache is not None for cache in reused)
    else:  # peft prefix tuning keeps Seq2SeqTrainer's two passes
        assert calls[0] == 2 * batches

    calls[0] = 0
    two_pass = trainer_for(TwoPassTrainer, model, data, tiny_tokenizer, tmp_path / "two")
    reference = two_pass.evaluate()
    assert calls[0] == 2 * batches

    assert one_pass.last_eval_class_ids == two_pass.last_eval_class_ids
    for key in ("eval_accuracy", "eval_macro_f1", "eval_invalid_rate", "eval_num_scored"):
        assert metrics[key] == reference[key]
    if not reusable(model):  # both trainers took the same two passes: nothing more to compare
        assert metrics["eval_loss"] == reference["eval_loss"]
        return

    # Batch by batch: the same generated token ids (the two-pass step pads them to generation_config.max_length) and
    # the same loss (T5's mean over the batch's label tokens).
    label_tokens = two_pass_loss = 0.0
    for batch in one_pass.get_eval_dataloader():
        _, (generated, sums_and_counts), _ = one_pass.prediction_step(model, batch, prediction_loss_only=False)
        loss, padded, _ = two_pass.prediction_step(model, batch, prediction_loss_only=False)
        assert torch.equal(generated, padded[:, : generated.shape[1]])
        assert (padded[:, generated.shape[1]:] == tiny_tokenizer.pad_token_id).all()
        batch_tokens = sums_and_counts[:, 1].sum().item()
        # 1e-6 relative: a float32 mean near 8 (the random (IA)³ vectors') has a last bit of about 1e-6 itself.
        assert abs(sums_and_counts[:, 0].sum().item() / batch_tokens - loss.item()) <= 1e-6 * max(1.0, loss.item())
        label_tokens += batch_tokens
        two_pass_loss += loss.item() * batch_tokens
    # eval_loss is the mean over all label tokens. Trainer's own aggregate repeats each batch's loss by the size of
    # the *first* batch, so it over-weights a short last batch (45 = 5 x 8 + 5 here); with full batches they agree.
    assert abs(metrics["eval_loss"] - two_pass_loss / label_tokens) <= 1e-6 * max(1.0, metrics["eval_loss"])


@pytest.mark.parametrize(("method", "implementation"), [("lora", "scratch"), ("prompt_tuning", "library")])
def test_with_full_batches_eval_loss_equals_the_two_pass_trainers_own(method, implementation, tiny_tokenizer,
                                                                        tmp_path):
    data = load_data(dataset_name=TINY_DATASET_NAME, tokenizer=tiny_tokenizer, max_source_length=64,
                     max_eval_samples=48, max_train_samples=8)
    model = build_cell(method, implementation, tiny_tokenizer)
    metrics = trainer_for(GenerationAccuracyTrainer, model, data, tiny_tokenizer, tmp_path / "one").evaluate()
    reference = trainer_for(TwoPassTrainer, model, data, tiny_tokenizer, tmp_path / "two").evaluate()
    assert abs(metrics["eval_loss"] - reference["eval_loss"]) <= 1e-6


# ------------------------------------------------------------------------------------------------------- bf16
@requires_cpu_bf16
def test_bf16_alone_runs_on_a_cpu_machine_and_evaluation_encodes_under_autocast(data, tiny_tokenizer, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), bf16=True, per_device_eval_batch_size=8, report_to="none",
                             disable_tqdm=True)  # no use_cpu: Trainer alone refuses bf16 on a machine without a GPU
    assert args.use_cpu and args.bf16
    model = build_cell("lora", "scratch", tiny_tokenizer)
    under_autocast = []
    model.get_encoder().register_forward_hook(
        lambda *unused: under_autocast.append(torch.is_autocast_enabled("cpu")))
    trainer = GenerationAccuracyTrainer(
        model=model, args=args, eval_dataset=data.eval_dataset, processing_class=tiny_tokenizer,
        data_collator=DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100), label_words=data.label_words)
    metrics = trainer.evaluate()
    # Seq2SeqTrainer ran generate's encoder outside autocast (evaluation was only 1.15x faster in bf16).
    assert under_autocast and all(under_autocast)
    assert metrics["eval_num_scored"] == len(data.eval_dataset)


@requires_no_gpu
def test_bf16_on_a_cpu_without_bf16_instructions_is_refused(monkeypatch, tmp_path):
    from hf_peft_suite import arguments
    from hf_peft_suite.errors import UsageError

    monkeypatch.setattr(arguments, "cpu_bf16_problem", lambda: "this CPU has no bfloat16 instructions (test)")
    with pytest.raises(UsageError, match=r"--bf16 on this machine: this CPU has no bfloat16 instructions \(test\); "
                                         r"leave --bf16 out"):
        TrainingArguments(output_dir=str(tmp_path), bf16=True)


@requires_cpu_bf16
@pytest.mark.slow
@pytest.mark.parametrize(("method", "implementation"), cells())
def test_every_cell_trains_and_evaluates_with_bf16_on_the_cpu(method, implementation, tmp_path):
    from hf_peft_suite.experiment import run_experiment

    results = run_experiment(preset="tiny", method=method, implementation=implementation, bf16=True, use_cpu=False,
                             max_steps=3, max_train_samples=96, max_eval_samples=16, output_dir=str(tmp_path / "run"))
    assert results["config"]["training"]["bf16"] is True and results["config"]["training"]["use_cpu"] is True
    assert results["history"][-1]["eval_num_scored"] == 16
    assert torch.isfinite(torch.tensor(results["history"][-1]["eval_loss"]))


@requires_cpu_bf16
def test_a_bf16_run_leaves_the_next_run_in_the_same_process_in_float32(tmp_path):
    """transformers writes the precision into the environment and reads it back as the next default: after a --bf16
    run, a plain one in the same process (and the processes it starts) would have computed in bf16 too."""
    import os

    environment = dict(os.environ)
    TrainingArguments(output_dir=str(tmp_path / "a"), bf16=True, report_to="none")  # 4.57 sets the variable to bf16
    plain = TrainingArguments(output_dir=str(tmp_path / "b"), use_cpu=True, report_to="none", eval_strategy="no")
    assert os.environ.get("ACCELERATE_MIXED_PRECISION", "no") == "no" and not plain.bf16
    trainer = GenerationAccuracyTrainer(model=build_tiny_model(), args=plain, processing_class=__import__(
        "hf_peft_suite.tiny").tiny.build_tiny_tokenizer(), label_words=["negative", "positive"])
    assert trainer.accelerator.mixed_precision == "no"
    os.environ.clear()
    os.environ.update(environment)
