"""Soft prompt tuning, scratch vs peft: same init, same numbers, same generations, delta-only artifacts, interop."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSeq2SeqLM, HfArgumentParser

import hf_peft_suite  # noqa: F401  (registers the delta models with the Auto classes)
from hf_peft_suite.errors import UsageError
from hf_peft_suite.files import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME
from hf_peft_suite.methods import build_method_model, get_method
from hf_peft_suite.methods.delta import DELTA_WEIGHTS_NAME
from hf_peft_suite.methods.prompt_tuning import (
    PromptTuningOptions,
    SoftPromptModel,
    build_peft_prompt_tuning,
    build_soft_prompt_model,
    export_to_peft,
    import_from_peft,
    text_token_ids,
)
from hf_peft_suite.tiny import make_tiny_review

from .conftest import requires_shared
from .helpers import trainable

TOLERANCE = 1e-5
GENERATION_SETTINGS = (
    {"max_new_tokens": 4, "suppress_tokens": [0]},  # greedy; pad suppressed so random bases say something
    {"max_new_tokens": 4, "suppress_tokens": [0], "num_beams": 3},
)
BUILDERS = {"scratch": build_soft_prompt_model, "library": build_peft_prompt_tuning}


def scratch_prompt(model):
    return model.soft_prompt.prompt_embeddings


def library_prompt(model):
    return model.prompt_encoder["default"].embedding.weight


def build_pair(base, tokenizer, seed=1, **options):
    """Scratch and library models on copies of ``base``, built from the same seed (so the same initial prompt)."""
    options = PromptTuningOptions(**{"num_virtual_tokens": 5, **options})
    torch.manual_seed(seed)
    scratch = build_soft_prompt_model(copy.deepcopy(base), options, tokenizer)
    torch.manual_seed(seed)
    library = build_peft_prompt_tuning(copy.deepcopy(base), options, tokenizer)
    return scratch, library


def padded_batch(tokenizer):
    """Three reviews of different lengths (so the encoder mask has zeros) and their label words."""
    inputs = tokenizer(
        ["the movie was great fun and a charming story", "awful", "boring dull plot"], return_tensors="pt", padding=True
    )
    targets = tokenizer(["positive", "negative", "negative"], return_tensors="pt", padding=True)
    labels = targets.input_ids.masked_fill(targets.attention_mask == 0, -100)
    return inputs, labels


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------------------------------ initialisation
@pytest.mark.parametrize("prompt_init", ["random", "vocab", "text"])
def test_same_seed_gives_the_same_initial_prompt_in_both_implementations(tiny_model, tiny_tokenizer, prompt_init):
    scratch, library = build_pair(tiny_model, tiny_tokenizer, prompt_init=prompt_init, prompt_init_text="great")
    assert torch.equal(scratch_prompt(scratch), library_prompt(library))
    assert scratch_prompt(scratch).dtype == torch.float32


def test_text_init_matches_peft_loading_the_tokenizer_by_name(tiny_model, tiny_tokenizer, tmp_path):
    """peft's own TEXT init (tokenizer loaded from a folder) gives exactly our prompt built from the tokenizer object."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    tiny_tokenizer.save_pretrained(tmp_path)
    text = "positive negative"  # 2 words + </s>: tiled 3, 3, 1 times into 7 tokens
    config = PromptTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=7, num_transformer_submodules=1,
        prompt_tuning_init="TEXT", prompt_tuning_init_text=text, tokenizer_name_or_path=str(tmp_path),
    )
    peft_own = get_peft_model(copy.deepcopy(tiny_model), config)
    options = PromptTuningOptions(num_virtual_tokens=7, prompt_init="text", prompt_init_text=text)
    scratch = build_soft_prompt_model(copy.deepcopy(tiny_model), options, tiny_tokenizer)
    library = build_peft_prompt_tuning(copy.deepcopy(tiny_model), options, tiny_tokenizer)

    ids = tiny_tokenizer(text).input_ids
    assert text_token_ids(tiny_tokenizer, text, 7) == ids * 2 + ids[:1] and ids[-1] == tiny_tokenizer.eos_token_id
    expected = tiny_model.get_input_embeddings().weight[ids * 2 + ids[:1]]
    assert torch.equal(library_prompt(peft_own), expected)
    assert torch.equal(scratch_prompt(scratch), expected)
    assert torch.equal(library_prompt(library), expected)


# ------------------------------------------------------------------------------------------------ parity
def test_scratch_and_peft_give_the_same_logits_loss_gradients_and_generations(tiny_model, tiny_tokenizer):
    scratch, library = build_pair(tiny_model, tiny_tokenizer, prompt_init="random")
    with torch.no_grad():  # a prompt unlike any init, the same in both
        scratch_prompt(scratch).copy_(torch.randn(5, tiny_model.config.d_model, generator=torch.Generator().manual_seed(7)))
        library_prompt(library).copy_(scratch_prompt(scratch))
    inputs, labels = padded_batch(tiny_tokenizer)

    out_scratch = scratch(**inputs, labels=labels)
    out_library = library(**inputs, labels=labels)
    out_scratch.loss.backward()
    out_library.loss.backward()
    logits_diff = max_diff(out_scratch.logits, out_library.logits)
    loss_diff = abs(out_scratch.loss.item() - out_library.loss.item())
    grad_diff = max_diff(scratch_prompt(scratch).grad, library_prompt(library).grad)
    print(f"\nmax abs diff: logits {logits_diff:.2e}, loss {loss_diff:.2e}, grad wrt prompt {grad_diff:.2e}")
    assert logits_diff <= TOLERANCE and loss_diff <= TOLERANCE and grad_diff <= TOLERANCE
    assert scratch_prompt(scratch).grad.abs().max() > 0  # the prompt is attended, so it gets a gradient

    # The prompt changes the output: parity is not two unprompted bases agreeing.
    with torch.no_grad():
        unprompted = tiny_model(**inputs, labels=labels).logits
    assert max_diff(out_scratch.logits, unprompted) > 1e-3

    scratch.eval(), library.eval()
    for settings in GENERATION_SETTINGS:
        generated = scratch.generate(**inputs, **settings)
        assert torch.equal(generated, library.generate(**inputs, **settings)), settings


def test_only_the_encoder_mask_is_extended_and_padding_does_not_leak(tiny_model, tiny_tokenizer):
    scratch, _ = build_pair(tiny_model, tiny_tokenizer)
    scratch.eval()
    inputs, labels = padded_batch(tiny_tokenizer)
    decoder_mask = (labels != -100).long()
    with torch.no_grad():
        batched = scratch(**inputs, labels=labels, decoder_attention_mask=decoder_mask)
        alone = scratch(**tiny_tokenizer(["awful"], return_tensors="pt"), labels=labels[1:2, :2])
    assert max_diff(batched.logits[1, :2], alone.logits[0]) <= TOLERANCE
    greedy = GENERATION_SETTINGS[0]
    assert torch.equal(
        scratch.generate(**inputs, **greedy)[1], scratch.generate(**tiny_tokenizer(["awful"], return_tensors="pt"), **greedy)[0]
    )


# ------------------------------------------------------------------------------------------------ parameter counts
@pytest.fixture
def t5_small_on_meta(t5_small_path):
    """t5-small's architecture with no storage: parameter counts without 240 MB of random weights."""
    config = AutoConfig.from_pretrained(t5_small_path)

    def build():
        with torch.device("meta"):
            return AutoModelForSeq2SeqLM.from_config(config)

    return build




@requires_shared
def test_trainable_parameters_on_t5_small_are_n_times_d_model_in_both(t5_small_on_meta):
    from peft import PromptTuningConfig, TaskType, get_peft_model

    options = PromptTuningOptions(num_virtual_tokens=20, prompt_init="random")
    base = t5_small_on_meta()
    assert sum(parameter.numel() for parameter in base.parameters()) == 60_506_624
    expected = options.num_virtual_tokens * base.config.d_model  # n * d_model
    assert expected == 10_240
    scratch = build_soft_prompt_model(base, options)
    assert trainable(scratch) == expected and scratch.delta_parameter_names() == ["soft_prompt.prompt_embeddings"]
    library = build_peft_prompt_tuning(t5_small_on_meta(), options)
    assert library.get_nb_trainable_parameters()[0] == trainable(library) == expected
    # peft's seq2seq default keeps a second, never-read decoder prompt: twice the count.
    default = get_peft_model(t5_small_on_meta(), PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=20))
    assert default.get_nb_trainable_parameters()[0] == 2 * expected == 20_480


# ------------------------------------------------------------------------------------------------ training
def tiny_batches(tokenizer, count=2, size=8):
    rng = random.Random(0)
    batches = []
    for _ in range(count):
        labels = [index % 2 for index in range(size)]
        inputs = tokenizer([make_tiny_review(label, rng) for label in labels], return_tensors="pt", padding=True)
        targets = tokenizer([("negative", "positive")[label] for label in labels], return_tensors="pt").input_ids
        batches.append({**inputs, "labels": targets})
    return batches


def test_training_moves_only_the_prompt_and_both_implementations_stay_together(tiny_model, tiny_tokenizer):
    scratch, library = build_pair(tiny_model, tiny_tokenizer, prompt_init="vocab")
    frozen = {name: tensor.clone() for name, tensor in tiny_model.state_dict().items()}
    learning_rate = get_method("prompt_tuning").default_learning_rate
    # As Trainer does: optimise whatever requires grad, so a base weight left trainable would move and be caught.
    optimizers = [
        torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
        for model in (scratch, library)
    ]
    batches = tiny_batches(tiny_tokenizer)
    losses = {"scratch": [], "library": []}
    for step in range(12):
        batch = batches[step % len(batches)]
        for name, model, optimizer in zip(losses, (scratch, library), optimizers):
            optimizer.zero_grad()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            losses[name].append(loss.item())

    for name, model in (("scratch", scratch.base), ("library", library.get_base_model())):
        assert losses[name][-2:] < losses[name][:2] and sum(losses[name][-2:]) < 0.8 * sum(losses[name][:2]), losses
        state = model.state_dict()
        assert all(torch.equal(state[key], value) for key, value in frozen.items()), f"{name} moved a base weight"
    prompt_diff = max_diff(scratch_prompt(scratch), library_prompt(library))
    print(f"\nafter 12 AdamW steps: prompts differ by {prompt_diff:.2e}; losses {losses['scratch'][0]:.3f} -> "
          f"{losses['scratch'][-1]:.3f}")
    assert prompt_diff <= 1e-4


# ------------------------------------------------------------------------------------------------ artifacts
@pytest.fixture
def trained_scratch(tiny_base_dir, tiny_tokenizer):
    """A scratch model on the saved tiny base whose prompt has been moved off its init."""
    torch.manual_seed(3)
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir)
    model = build_soft_prompt_model(base, PromptTuningOptions(num_virtual_tokens=6), tiny_tokenizer)
    with torch.no_grad():
        model.soft_prompt.prompt_embeddings.add_(torch.randn_like(model.soft_prompt.prompt_embeddings))
    return model.eval()


def assert_same_behaviour(model, other, tokenizer):
    inputs, labels = padded_batch(tokenizer)
    with torch.no_grad():
        assert torch.equal(model(**inputs, labels=labels).logits, other(**inputs, labels=labels).logits)
    for settings in GENERATION_SETTINGS:
        assert torch.equal(model.generate(**inputs, **settings), other.generate(**inputs, **settings)), settings


def test_save_writes_only_the_prompt_and_the_auto_class_restores_it(trained_scratch, tiny_tokenizer, tmp_path):
    trained_scratch.save_pretrained(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", DELTA_WEIGHTS_NAME]
    weights = load_file(tmp_path / DELTA_WEIGHTS_NAME)
    assert list(weights) == ["soft_prompt.prompt_embeddings"] and weights["soft_prompt.prompt_embeddings"].shape == (6, 64)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["model_type"], config["num_virtual_tokens"], config["prompt_init"]) == (
        "hf_peft_suite_prompt_tuning", 6, "vocab"
    )

    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert type(loaded) is SoftPromptModel
    assert torch.equal(scratch_prompt(loaded), scratch_prompt(trained_scratch))
    assert_same_behaviour(trained_scratch, loaded, tiny_tokenizer)


def test_export_to_peft_loads_with_peft_model_from_pretrained(trained_scratch, tiny_base_dir, tiny_tokenizer, tmp_path):
    from peft import PeftModel

    export_to_peft(trained_scratch, tmp_path / "peft")
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == [PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME]
    loaded = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), tmp_path / "peft")
    assert type(loaded).__name__ == "PeftModelForSeq2SeqLM"
    assert_same_behaviour(trained_scratch, loaded.eval(), tiny_tokenizer)

    # The exported config says what peft's own save_pretrained says about the same prompt.
    torch.manual_seed(0)
    library = build_peft_prompt_tuning(
        AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), PromptTuningOptions(num_virtual_tokens=6), tiny_tokenizer
    )
    library.save_pretrained(tmp_path / "library")
    exported, saved = (json.loads((tmp_path / d / PEFT_CONFIG_NAME).read_text()) for d in ("peft", "library"))
    assert {key: exported.get(key) for key in saved} == saved


def test_import_from_peft_restores_a_library_trained_prompt(tiny_base_dir, tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    library = build_peft_prompt_tuning(
        AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), PromptTuningOptions(num_virtual_tokens=6), tiny_tokenizer
    )
    with torch.no_grad():
        library_prompt(library).add_(torch.randn_like(library_prompt(library)))
    library.save_pretrained(tmp_path)

    imported = import_from_peft(tmp_path)  # the base is found by the adapter's base_model_name_or_path
    assert type(imported) is SoftPromptModel and imported.config.prompt_init == "vocab"
    assert torch.equal(scratch_prompt(imported), library_prompt(library))
    assert_same_behaviour(imported, library.eval(), tiny_tokenizer)

    # ... and the scratch artifact round trip goes on from there.
    imported.save_pretrained(tmp_path / "scratch")
    assert_same_behaviour(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "scratch"), library, tiny_tokenizer)


def test_import_from_peft_keeps_the_encoder_half_of_a_default_seq2seq_prompt(tiny_model, tiny_tokenizer, tmp_path):
    from peft import PromptTuningConfig, TaskType, get_peft_model

    default = get_peft_model(
        copy.deepcopy(tiny_model), PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=4)
    )
    assert library_prompt(default).shape == (8, 64)  # encoder prompt + the unused decoder prompt
    default.save_pretrained(tmp_path)
    imported = import_from_peft(tmp_path, base_model=copy.deepcopy(tiny_model))
    assert torch.equal(scratch_prompt(imported), library_prompt(default)[:4])
    assert_same_behaviour(imported, default.eval(), tiny_tokenizer)


def test_import_from_peft_refuses_other_adapters(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model

    get_peft_model(copy.deepcopy(tiny_model), LoraConfig(target_modules=["q", "v"], r=2)).save_pretrained(tmp_path)
    with pytest.raises(UsageError, match="LORA adapter, not prompt tuning"):
        import_from_peft(tmp_path, base_model=tiny_model)


# ------------------------------------------------------------------------------------------------ options and errors
@pytest.mark.parametrize("implementation", ["scratch", "library"])
@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_virtual_tokens": 0}, "--num_virtual_tokens must be a positive integer, got 0"),
        ({"num_virtual_tokens": -4}, "--num_virtual_tokens must be a positive integer, got -4"),
        ({"prompt_init": "zeros"}, "unknown --prompt_init 'zeros'; choose one of random, vocab, text"),
        ({"prompt_init": "text"}, "--prompt_init text needs the text to start from; pass --prompt_init_text"),
        ({"prompt_init": "text", "prompt_init_text": "  "}, "--prompt_init text needs the text"),
    ],
)
def test_bad_options_are_usage_errors(tiny_model, tiny_tokenizer, implementation, options, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        BUILDERS[implementation](tiny_model, PromptTuningOptions(**options), tiny_tokenizer)


@pytest.mark.parametrize("implementation", ["scratch", "library"])
def test_text_init_without_a_tokenizer_is_a_usage_error(tiny_model, implementation):
    options = PromptTuningOptions(prompt_init="text", prompt_init_text="positive")
    with pytest.raises(UsageError, match="needs the tokenizer"):
        BUILDERS[implementation](tiny_model, options, None)


def test_options_parse_from_the_command_line_and_the_method_is_registered(tiny_model, tiny_tokenizer):
    (options,) = HfArgumentParser(PromptTuningOptions).parse_args_into_dataclasses(
        ["--num_virtual_tokens", "3", "--prompt_init", "text", "--prompt_init_text", "positive negative"]
    )
    assert options == PromptTuningOptions(3, "text", "positive negative")
    assert PromptTuningOptions() == PromptTuningOptions(20, "vocab", None)
    method = get_method("prompt_tuning")
    assert method.options is PromptTuningOptions and method.default_learning_rate == 0.3
    model = build_method_model(tiny_model, "prompt_tuning", "scratch", options, tiny_tokenizer)
    assert isinstance(model, SoftPromptModel) and model.delta_parameter_names() == ["soft_prompt.prompt_embeddings"]


@pytest.mark.slow
def test_the_scratch_path_never_imports_peft(fresh_interpreter):
    """Every method's scratch model is built, trained a step, saved, loaded back and generates without peft (in a
    fresh interpreter: the session's ``fresh_interpreter``, conftest.py)."""
    assert fresh_interpreter["peft_imported_by_the_scratch_path"] == []


def test_trainer_averages_the_loss_per_batch_for_both_implementations(tiny_model, tiny_tokenizer, tmp_path):
    """Under transformers 5 Trainer would pass num_items_in_batch to peft's T5; both must see the same loss."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    arguments = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    for model in build_pair(tiny_model, tiny_tokenizer):
        trainer = Seq2SeqTrainer(model=model, args=arguments)
        assert trainer.model_accepts_loss_kwargs is False, type(model).__name__
        assert trainer.label_names == ["labels"], type(model).__name__  # or Trainer would drop the labels column
