"""Prefix tuning, scratch vs peft: the same initial prefix, the same numbers (logits, loss, gradients), the same
generations (greedy and beam, equal to step-by-step forward decoding), peft's seq2seq layout, parameter counts,
delta-only artifacts, export/import, training and refusals."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM, T5ForConditionalGeneration

import hf_peft_suite  # noqa: F401  (registers the delta models with the Auto classes)
from hf_peft_suite.errors import UsageError
from hf_peft_suite.files import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME
from hf_peft_suite.methods.delta import DELTA_WEIGHTS_NAME
from hf_peft_suite.methods.prefix_tuning import (
    PrefixTuningModel,
    PrefixTuningOptions,
    build_library,
    build_scratch,
    export_to_peft,
    fix_peft_prefix_generation,
    import_from_peft,
    peft_layer_rows,
)
from hf_peft_suite.tiny import tiny_t5_config

from .conftest import requires_shared
from .helpers import eval_logits_diff, max_abs_diff, train_checking_frozen
from .test_prompt_tuning import padded_batch

TOLERANCE = 1e-5
GENERATION_SETTINGS = (  # pad and </s> suppressed, so a random base writes tokens to compare
    {"max_new_tokens": 4, "suppress_tokens": [0, 1]},
    {"max_new_tokens": 4, "suppress_tokens": [0, 1], "num_beams": 3},
)


def prefix_parameters(model) -> dict[str, torch.Tensor]:
    """The trained tensors by their name inside the prefix encoder (the same names in both implementations)."""
    if isinstance(model, PrefixTuningModel):
        return dict(model.prefix_encoder.named_parameters())
    return dict(model.prompt_encoder["default"].named_parameters())


def build_pair(base, seed: int = 1, **options):
    options = PrefixTuningOptions(**{"prefix_num_virtual_tokens": 3, **options})
    torch.manual_seed(seed)
    scratch = build_scratch(copy.deepcopy(base), options)
    torch.manual_seed(seed)
    library = build_library(copy.deepcopy(base), options)
    return scratch, library


def randomize(scratch, library, std: float = 1.0) -> None:
    """A prefix unlike any init (large enough to change the outputs), the same in both."""
    generator = torch.Generator().manual_seed(7)
    library_parameters = prefix_parameters(library)
    with torch.no_grad():
        for name, parameter in prefix_parameters(scratch).items():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            library_parameters[name].copy_(parameter)


def greedy_by_forward(model, inputs, steps: int = 4) -> torch.Tensor:
    """Greedy decoding by full forward passes (no cache, pad and </s> suppressed): what generate must reproduce."""
    start = model.generation_config.decoder_start_token_id
    ids = torch.full((inputs["input_ids"].shape[0], 1), start, dtype=torch.long)
    for _ in range(steps):
        with torch.no_grad():
            logits = model(**inputs, decoder_input_ids=ids).logits[:, -1]
        logits[:, [0, 1]] = -float("inf")
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


def six_layer_t5() -> T5ForConditionalGeneration:
    """The tiny T5 with t5-small's 6 decoder layers (so peft's layout repeats rows as on t5-small)."""
    config = tiny_t5_config()
    config.num_layers = config.num_decoder_layers = 6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return T5ForConditionalGeneration(config)


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("projection", [False, True], ids=["prefix", "mlp"])
def test_same_seed_same_prefix_and_equal_logits_loss_gradients_and_generations(tiny_model, tiny_tokenizer, projection):
    scratch, library = build_pair(tiny_model, prefix_projection=projection)
    library_parameters = prefix_parameters(library)
    assert prefix_parameters(scratch).keys() == library_parameters.keys()
    for name, parameter in prefix_parameters(scratch).items():  # the same draws, module for module
        assert torch.equal(parameter, library_parameters[name]), name
    randomize(scratch, library, std=0.5 if projection else 1.0)

    inputs, labels = padded_batch(tiny_tokenizer)
    outputs = {}
    for name, model in (("scratch", scratch), ("library", library)):
        model.train()
        outputs[name] = model(**inputs, labels=labels)
        outputs[name].loss.backward()
    logits_diff = max_abs_diff(outputs["scratch"].logits, outputs["library"].logits)
    loss_diff = abs(outputs["scratch"].loss.item() - outputs["library"].loss.item())
    grad_diff = max(max_abs_diff(p.grad, library_parameters[n].grad) for n, p in prefix_parameters(scratch).items())
    print(f"\nmax abs diff: logits {logits_diff:.2e}, loss {loss_diff:.2e}, gradients {grad_diff:.2e}")
    assert logits_diff <= TOLERANCE and loss_diff <= TOLERANCE and grad_diff <= TOLERANCE
    with torch.no_grad():
        assert max_abs_diff(outputs["scratch"].logits, tiny_model(**inputs, labels=labels).logits) > 1e-2

    scratch.eval(), library.eval()
    for settings in GENERATION_SETTINGS:
        generated = scratch.generate(**inputs, **settings)
        assert torch.equal(generated, library.generate(**inputs, **settings)), settings
    assert torch.equal(scratch.generate(**inputs, **GENERATION_SETTINGS[0]), greedy_by_forward(scratch, inputs))


def test_a_decoder_attention_mask_gets_the_prefix_in_front_in_both(tiny_model, tiny_tokenizer):
    scratch, library = build_pair(tiny_model)
    randomize(scratch, library)
    inputs, labels = padded_batch(tiny_tokenizer)
    mask = (labels != -100).long()
    scratch.eval(), library.eval()
    with torch.no_grad():
        masked = scratch(**inputs, labels=labels, decoder_attention_mask=mask).logits
        assert max_abs_diff(masked, library(**inputs, labels=labels, decoder_attention_mask=mask).logits) <= TOLERANCE
        assert torch.equal(masked, scratch(**inputs, labels=labels).logits)  # a causal decoder: padding comes last


def test_peft_own_generate_disagrees_with_its_forward_which_the_fix_repairs(tiny_model, tiny_tokenizer):
    """Why :func:`fix_peft_prefix_generation` exists: peft 0.21's seq2seq prefix ``generate`` puts the first
    generated token at position 0 (transformers 4.57) or drops the prefix (5.x). If this starts failing, peft has
    fixed it and the workaround can go."""
    _, library = build_pair(tiny_model, prefix_num_virtual_tokens=5)
    randomize(library, library, std=2.0)
    library.eval()
    inputs = tiny_tokenizer(["the movie was great fun", "awful", "dull plot but a superb cast", "boring"],
                            return_tensors="pt", padding=True)
    expected = greedy_by_forward(library, inputs)
    fixed = library.generate(**inputs, **GENERATION_SETTINGS[0])
    del library.prepare_inputs_for_generation  # peft's own generation path
    own = library.generate(**inputs, **GENERATION_SETTINGS[0])
    assert torch.equal(fixed, expected)
    assert not torch.equal(own, expected), "peft's own prefix generation now agrees with its forward"


# ------------------------------------------------------------------------------------------------ layout
def test_peft_seq2seq_layout_feeds_half_the_rows_and_both_implementations_follow_it(tiny_tokenizer):
    assert peft_layer_rows(6) == [(0, 1), (4, 5), (8, 9), (0, 1), (4, 5), (8, 9)]
    assert peft_layer_rows(2) == [(0, 1), (0, 1)]
    scratch, library = build_pair(six_layer_t5())
    randomize(scratch, library)
    inputs, labels = padded_batch(tiny_tokenizer)
    for model in (scratch, library):
        model(**inputs, labels=labels).loss.backward()
        gradient = prefix_parameters(model)["embedding.weight"].grad.view(3, 12, -1)
        reached = (gradient.abs().sum(dim=(0, 2)) > 0).tolist()
        assert reached == [row % 4 < 2 for row in range(12)], reached  # rows 0,1,4,5,8,9 only


# ------------------------------------------------------------------------------------------------ counts
@requires_shared
@pytest.mark.parametrize(("projection", "expected"), [(False, 122_880), (True, 3_424_768)])
def test_trainable_parameters_on_t5_small(t5_small_path, projection, expected):
    config = AutoConfig.from_pretrained(t5_small_path)
    n, layers, width = 20, config.num_decoder_layers, config.num_heads * config.d_kv
    formula = n * 2 * layers * width  # the prefix: 20 * 2 * 6 * 512
    if projection:  # embeddings n x width, then width -> width (hidden) -> 2 L width
        formula = n * width + (width * width + width) + (width * 2 * layers * width + 2 * layers * width)
    assert formula == expected
    options = PrefixTuningOptions(prefix_num_virtual_tokens=n, prefix_projection=projection)
    for build in (build_scratch, build_library):
        with torch.device("meta"):
            model = build(AutoModelForSeq2SeqLM.from_config(config), options)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected, build.__name__
        if build is build_library:
            assert model.get_nb_trainable_parameters()[0] == expected
            if not projection:  # peft's own config, with peft's defaults for layers, heads and width
                with torch.device("meta"):
                    own = peft.get_peft_model(AutoModelForSeq2SeqLM.from_config(config), peft.PrefixTuningConfig(
                        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=n))
                assert own.get_nb_trainable_parameters()[0] == expected


# ------------------------------------------------------------------------------------------------ artifacts
def test_save_writes_only_the_prefix_and_the_auto_class_restores_it(tiny_base_dir, tiny_tokenizer, tmp_path):
    scratch, library = build_pair(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), prefix_projection=True)
    randomize(scratch, library, std=0.5)
    scratch.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", DELTA_WEIGHTS_NAME]
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["model_type"], config["prefix_num_virtual_tokens"], config["prefix_projection_hidden_size"]) == (
        "hf_peft_suite_prefix_tuning", 3, 64)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert type(loaded) is PrefixTuningModel
    assert eval_logits_diff(loaded, scratch, tiny_tokenizer) == 0
    inputs, _ = padded_batch(tiny_tokenizer)
    assert torch.equal(loaded.generate(**inputs, **GENERATION_SETTINGS[1]), scratch.generate(**inputs, **GENERATION_SETTINGS[1]))


@pytest.mark.parametrize("projection", [False, True], ids=["prefix", "mlp"])
def test_export_to_peft_loads_in_peft_and_imports_back(tiny_base_dir, tiny_tokenizer, tmp_path, projection):
    scratch, _ = build_pair(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), prefix_projection=projection)
    randomize(scratch, scratch, std=0.5)
    export_to_peft(scratch, tmp_path / "peft")
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == [PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME]
    saved = json.loads((tmp_path / "peft" / PEFT_CONFIG_NAME).read_text())
    assert (saved["peft_type"], saved["num_transformer_submodules"], saved["prefix_projection"]) == (
        "PREFIX_TUNING", 2, projection)
    loaded = peft.PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), tmp_path / "peft")
    fix_peft_prefix_generation(loaded)
    assert eval_logits_diff(scratch, loaded, tiny_tokenizer) <= TOLERANCE
    inputs, _ = padded_batch(tiny_tokenizer)
    for settings in GENERATION_SETTINGS:
        assert torch.equal(scratch.generate(**inputs, **settings), loaded.generate(**inputs, **settings))

    back = import_from_peft(tmp_path / "peft")  # the base named by the adapter; a projected prefix comes back plain
    assert back.config.prefix_projection_hidden_size == 0
    assert eval_logits_diff(back, scratch, tiny_tokenizer) <= TOLERANCE
    back.save_pretrained(tmp_path / "scratch")
    assert eval_logits_diff(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "scratch"), back, tiny_tokenizer) == 0


def test_import_refuses_other_adapters_and_other_bases(tiny_model, tmp_path):
    peft.get_peft_model(copy.deepcopy(tiny_model), peft.LoraConfig(target_modules=["q"], r=2)).save_pretrained(
        tmp_path / "lora")
    with pytest.raises(UsageError, match="holds a LORA adapter, not prefix tuning"):
        import_from_peft(tmp_path / "lora", base_model=tiny_model)
    _, library = build_pair(tiny_model)
    library.save_pretrained(tmp_path / "prefix")
    with pytest.raises(UsageError, match="trained on another base model|this base's decoder needs"):
        import_from_peft(tmp_path / "prefix", base_model=six_layer_t5())


# ------------------------------------------------------------------------------------------------ training
def test_training_moves_only_the_prefix_and_both_follow_one_curve(tiny_model, tiny_tokenizer):
    scratch, library = build_pair(tiny_model, prefix_num_virtual_tokens=4)
    inputs, labels = padded_batch(tiny_tokenizer)
    curves = [train_checking_frozen(model, {**inputs, "labels": labels}, learning_rate=0.1) for model in (scratch, library)]
    assert all(losses[-1] < 0.8 * losses[0] for losses in curves), curves
    assert max(abs(a - b) for a, b in zip(*curves)) <= 1e-4, curves


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prefix_num_virtual_tokens": 0}, "--prefix_num_virtual_tokens must be a positive integer, got 0"),
        ({"prefix_projection": True, "prefix_projection_hidden_size": -1}, "--prefix_projection_hidden_size must be"),
        ({"prefix_projection_hidden_size": 16}, "sizes the MLP of --prefix_projection true"),
    ],
)
def test_bad_options_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message):
        PrefixTuningOptions(**options)


def test_gradient_checkpointing_is_refused(tiny_model):
    model = build_scratch(tiny_model)
    with pytest.raises(UsageError, match="does not work with --gradient_checkpointing"):
        model.gradient_checkpointing_enable()


def test_a_projected_peft_checkpoint_is_refused_for_resuming_and_a_plain_one_is_not(tiny_model, tmp_path):
    from hf_peft_suite.methods import get_method

    library_format = get_method("prefix_tuning").library_format
    for projection in (False, True):
        _, library = build_pair(tiny_model, prefix_projection=projection)
        library_format.save(library, str(tmp_path / str(projection)))
        if projection:
            with pytest.raises(UsageError, match="the prefix its MLP computed, not the MLP.*--implementation scratch"):
                library_format.check(library, str(tmp_path / str(projection)))
        else:
            library_format.check(library, str(tmp_path / str(projection)))
