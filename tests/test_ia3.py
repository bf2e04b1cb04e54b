"""(IA)³, scratch and peft: the layer's formula, parity (logits, loss, gradients, generations), parameter counts,
save/load, merge, training, export to / import from peft's format, and usage errors."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM, HfArgumentParser, T5ForConditionalGeneration

import hf_peft_suite  # noqa: F401  (registers IA3Model with the Auto classes)
from hf_peft_suite.errors import UsageError
from hf_peft_suite.methods import get_method
from hf_peft_suite.methods.delta import DELTA_WEIGHTS_NAME
from hf_peft_suite.methods.ia3 import (
    IA3Linear,
    IA3Model,
    IA3Options,
    build_library,
    build_scratch,
    export_to_peft,
    import_from_peft,
)
from hf_peft_suite.methods.peft_files import PEFT_KEY_PREFIX
from hf_peft_suite.tiny import build_tiny_model

from .conftest import requires_shared
from .helpers import eval_logits_diff, max_abs_diff, train_checking_frozen
from .helpers import labelled_batch as batch

TOLERANCE = 1e-5


def peft_name(scratch_name: str) -> str:
    """``base.<module>.ia3_l`` (scratch) -> ``base_model.model.<module>.ia3_l.default`` (peft's parameter)."""
    return f"{PEFT_KEY_PREFIX}{scratch_name[len('base.'):]}.default"


def randomize(model: IA3Model, seed: int = 1) -> None:
    """Vectors far from their init (ones), so every rescaling shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.adapted_layers():
            layer.ia3_l.copy_(1 + torch.randn(layer.ia3_l.shape, generator=generator) * 0.5)


def scratch_and_library(options=None, base_builder=build_tiny_model):
    """Both implementations on identical bases, the library holding the scratch model's (random) vectors."""
    torch.manual_seed(0)
    scratch = build_scratch(base_builder(), options)
    torch.manual_seed(0)
    library = build_library(base_builder(), options)
    randomize(scratch)
    parameters = dict(library.named_parameters())
    with torch.no_grad():
        for name, tensor in scratch.delta_state_dict().items():
            parameters[peft_name(name)].copy_(tensor)
    return scratch, library


# --------------------------------------------------------------------------------------------- the layer itself
@pytest.mark.parametrize("feedforward", [False, True])
def test_ia3_linear_rescales_outputs_or_inputs_and_merges_exactly(feedforward):
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 4, bias=True)
    layer = IA3Linear(linear, feedforward=feedforward)
    assert layer.base_layer is linear and not linear.weight.requires_grad
    assert layer.ia3_l.shape == ((1, 6) if feedforward else (4, 1)) and torch.equal(layer.ia3_l, torch.ones_like(layer.ia3_l))
    x = torch.randn(3, 6)
    assert torch.equal(layer(x), linear(x))  # ones: starts equal to the frozen layer
    with torch.no_grad():
        layer.ia3_l.copy_(torch.rand(layer.ia3_l.shape) + 0.5)
    vector = layer.ia3_l.flatten()
    expected = linear(x * vector) if feedforward else linear(x) * vector
    assert max_abs_diff(layer(x), expected) <= 1e-6
    weight, bias = linear.weight.clone(), linear.bias.clone()
    layer.merge()
    assert max_abs_diff(layer(x), expected) <= 1e-6 and layer.merged
    layer.unmerge()
    assert torch.equal(linear.weight, weight) and torch.equal(linear.bias, bias)


# -------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize(
    "targets, feedforward", [(None, None), (["all-linear"], None), ([r".*decoder.*\.(k|v|wo)"], ["wo"])],
    ids=["defaults", "all-linear", "regex"],
)
def test_scratch_and_peft_give_the_same_logits_loss_gradients_and_generations(tiny_tokenizer, targets, feedforward):
    options = IA3Options(ia3_target_modules=targets, ia3_feedforward_modules=feedforward)
    torch.manual_seed(0)
    fresh_scratch = build_scratch(build_tiny_model(), options)
    after_scratch = torch.rand(3)
    torch.manual_seed(0)
    fresh_library = build_library(build_tiny_model(), options)
    assert torch.equal(torch.rand(3), after_scratch)  # both moved the random generator alike

    scratch, library = scratch_and_library(options)
    feedforward_layers = {name for name, layer in scratch.adapted_layers() if layer.feedforward}
    library_layers = {n[len("model."):]: m for n, m in library.base_model.named_modules() if hasattr(m, "ia3_l")}
    assert set(library_layers) == {name for name, _ in scratch.adapted_layers()}
    assert {name for name, m in library_layers.items() if m.is_feedforward} == feedforward_layers
    assert len(fresh_scratch.delta_parameter_names()) == len(list(fresh_library.named_parameters())) - sum(
        1 for _, p in fresh_library.named_parameters() if not p.requires_grad)

    inputs = batch(tiny_tokenizer)
    scratch.train(), library.train()
    scratch_output, library_output = scratch(**inputs), library(**inputs)
    scratch_output.loss.backward(), library_output.loss.backward()
    logits_diff = max_abs_diff(scratch_output.logits, library_output.logits)
    loss_diff = abs(scratch_output.loss.item() - library_output.loss.item())
    library_parameters = dict(library.named_parameters())
    gradient_diff = max(max_abs_diff(scratch.get_parameter(name).grad, library_parameters[peft_name(name)].grad)
                        for name in scratch.delta_parameter_names())
    print(f"\nmax abs diff: logits {logits_diff:.2e}, loss {loss_diff:.2e}, gradients {gradient_diff:.2e}")
    assert logits_diff <= TOLERANCE and loss_diff <= TOLERANCE and gradient_diff <= TOLERANCE
    assert all(scratch.get_parameter(name).grad.abs().max() > 0 for name in scratch.delta_parameter_names())
    with torch.no_grad():
        assert max_abs_diff(scratch_output.logits, build_tiny_model()(**inputs).logits) > 1e-2  # the vectors matter

    scratch.eval(), library.eval()
    generate = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=4)
    for beams in (1, 3):
        assert torch.equal(scratch.generate(**generate, num_beams=beams), library.generate(**generate, num_beams=beams))


def test_over_a_bf16_base_the_vectors_stay_fp32_and_match_peft(tiny_tokenizer):
    scratch, library = scratch_and_library(base_builder=lambda: build_tiny_model().to(torch.bfloat16))
    assert {tensor.dtype for tensor in scratch.delta_state_dict().values()} == {torch.float32}
    scratch.eval(), library.eval()
    with torch.no_grad():
        inputs = batch(tiny_tokenizer)
        assert torch.equal(scratch(**inputs).logits, library(**inputs).logits)


# ------------------------------------------------------------------------------------------ parameter counts
@requires_shared
@pytest.mark.parametrize("implementation", ["scratch", "library"])
def test_trainable_parameters_on_t5_small_are_peft_defaults_43008(t5_small_path, implementation):
    config = AutoConfig.from_pretrained(t5_small_path)
    with torch.device("meta"):
        base = AutoModelForSeq2SeqLM.from_config(config)
    model = get_method("ia3").builder(implementation)(base, IA3Options())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    attentions = config.num_layers + 2 * config.num_decoder_layers
    feed_forwards = config.num_layers + config.num_decoder_layers
    inner = config.num_heads * config.d_kv
    assert trainable == 2 * attentions * inner + feed_forwards * config.d_ff == 43_008  # k and v outputs; wo inputs
    if implementation == "library":
        with torch.device("meta"):
            own = peft.get_peft_model(AutoModelForSeq2SeqLM.from_config(config), peft.IA3Config(task_type="SEQ_2_SEQ_LM"))
        assert own.get_nb_trainable_parameters()[0] == model.get_nb_trainable_parameters()[0] == 43_008


# ------------------------------------------------------------------------------------------- save and load
def test_save_writes_only_the_vectors_and_the_auto_class_restores_them(tiny_base_dir, tiny_tokenizer, tmp_path):
    model = build_scratch(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir))
    randomize(model)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", DELTA_WEIGHTS_NAME]
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["model_type"], config["ia3_target_modules"], config["ia3_feedforward_modules"]) == (
        "hf_peft_suite_ia3", ["k", "v", "wo"], ["wo"])
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert type(loaded) is IA3Model
    model.eval()
    inputs = batch(tiny_tokenizer)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)


# ------------------------------------------------------------------------------------------------- merging
def test_merge_and_unload_gives_a_plain_t5_equal_to_the_ia3_model_and_to_peft_merge(tiny_tokenizer, tmp_path):
    scratch, library = scratch_and_library(IA3Options(ia3_target_modules=["k", "v", "o", "wo"]))
    scratch.eval()
    inputs = batch(tiny_tokenizer)
    with torch.no_grad():
        expected = scratch(**inputs).logits
        merged = scratch.merge_and_unload().eval()
        assert type(merged) is T5ForConditionalGeneration
        assert max_abs_diff(merged(**inputs).logits, expected) <= TOLERANCE
        assert torch.equal(scratch(**inputs).logits, expected)  # the (IA)³ model is left as it was
        library_merged = library.merge_and_unload().eval()
        assert max_abs_diff(library_merged(**inputs).logits, merged(**inputs).logits) <= TOLERANCE
        scratch.merge()
        assert max_abs_diff(scratch(**inputs).logits, expected) <= TOLERANCE
        scratch.unmerge()
        assert torch.equal(scratch(**inputs).logits, expected)


def test_merging_into_a_tied_lm_head_is_refused():
    model = build_scratch(build_tiny_model(), IA3Options(ia3_target_modules=["k", "lm_head"]))
    with pytest.raises(UsageError, match="cannot merge into lm_head: its weight is tied"):
        model.merge()
    assert not model.merged


# ------------------------------------------------------------------------------------------------ training
def test_training_moves_only_the_vectors_and_both_implementations_follow_one_curve(tiny_tokenizer):
    torch.manual_seed(0)
    scratch = build_scratch(build_tiny_model())
    torch.manual_seed(0)
    library = build_library(build_tiny_model())
    inputs = batch(tiny_tokenizer, size=8)
    curves = [train_checking_frozen(model, inputs, learning_rate=3e-2) for model in (scratch, library)]
    assert all(losses[-1] < 0.8 * losses[0] for losses in curves), curves
    assert max(abs(a - b) for a, b in zip(*curves)) <= 1e-4, curves


# --------------------------------------------------------------------------------------------- peft interop
def test_export_to_peft_loads_with_peft_and_imports_back(tiny_base_dir, tiny_tokenizer, tmp_path):
    scratch = build_scratch(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir))
    randomize(scratch)
    export_to_peft(scratch, tmp_path)
    adapter = json.loads((tmp_path / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "IA3" and sorted(adapter["target_modules"]) == ["k", "v", "wo"]
    assert adapter["feedforward_modules"] == ["wo"] and adapter["base_model_name_or_path"] == str(tiny_base_dir)
    loaded = peft.PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), tmp_path)
    assert eval_logits_diff(scratch, loaded, tiny_tokenizer) <= TOLERANCE
    back = import_from_peft(tmp_path)
    assert all(torch.equal(back.delta_state_dict()[n], t) for n, t in scratch.delta_state_dict().items())


def test_import_from_peft_reproduces_a_peft_trained_adapter(tiny_tokenizer, tmp_path):
    _, library = scratch_and_library(IA3Options(ia3_target_modules=["all-linear"]))
    library.save_pretrained(tmp_path)
    imported = import_from_peft(tmp_path, base_model=build_tiny_model())
    assert type(imported) is IA3Model
    imported.eval(), library.eval()
    inputs = batch(tiny_tokenizer)
    with torch.no_grad():
        assert max_abs_diff(imported(**inputs).logits, library(**inputs).logits) <= TOLERANCE


def test_import_refuses_other_adapters_and_unsupported_fields(tmp_path):
    peft.get_peft_model(build_tiny_model(), peft.LoraConfig(target_modules=["q"], r=2)).save_pretrained(tmp_path / "l")
    with pytest.raises(UsageError, match="holds a LORA adapter, not \\(IA\\)³"):
        import_from_peft(tmp_path / "l", base_model=build_tiny_model())
    _, library = scratch_and_library()
    library.save_pretrained(tmp_path / "i")
    config_path = tmp_path / "i" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "modules_to_save": ["lm_head"]}))
    with pytest.raises(UsageError, match="modules_to_save.*--implementation library"):
        import_from_peft(tmp_path / "i", base_model=build_tiny_model())


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    "options, message",
    [
        (dict(ia3_target_modules=["k", "v"], ia3_feedforward_modules=["wo"]), "names wo, which --ia3_target_modules"),
        (dict(ia3_target_modules=["query"]), "--ia3_target_modules query matches no module"),
        (dict(ia3_target_modules=["layer_norm"]), "selects encoder.block.0.layer.0.layer_norm, a T5LayerNorm"),
    ],
)
@pytest.mark.parametrize("implementation", ["scratch", "library"])
def test_bad_options_are_usage_errors(options, message, implementation):
    with pytest.raises(UsageError, match=message):
        get_method("ia3").builder(implementation)(build_tiny_model(), IA3Options(**options))


def test_option_parsing_and_feedforward_none():
    (options,) = HfArgumentParser(IA3Options).parse_args_into_dataclasses(
        ["--ia3_target_modules", "k,v", "--ia3_feedforward_modules", "none"])
    assert options == IA3Options(["k", "v"], [])
    with pytest.raises(UsageError, match="not all-linear"):
        IA3Options(ia3_feedforward_modules=["all-linear"])
    model = build_scratch(build_tiny_model(), options)
    assert not any(layer.feedforward for _, layer in model.adapted_layers())
    with pytest.raises(UsageError, match="already has \\(IA\\)³"):
        build_scratch(model.base, options)
