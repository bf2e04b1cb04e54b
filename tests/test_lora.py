"""LoRA, scratch and peft: the layer's formula, parity of the two implementations, parameter counts, save/load,
merge, training with a frozen base, export to / import from peft's format, and usage errors."""

from __future__ import annotations

import json
import math

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSeq2SeqLM, T5ForConditionalGeneration

import hf_peft_suite  # noqa: F401  (registers LoRAModel with the Auto classes)
from hf_peft_suite.errors import UsageError
from hf_peft_suite.methods import get_method
from hf_peft_suite.methods.delta import DELTA_WEIGHTS_NAME
from hf_peft_suite.methods.lora import (
    PEFT_KEY_PREFIX,
    LoRALinear,
    LoRAModel,
    LoRAOptions,
    build_library,
    build_scratch,
    export_to_peft,
    import_from_peft,
    lora_layers,
)
from hf_peft_suite.tiny import build_tiny_model

from .conftest import requires_shared
from .helpers import eval_logits_diff, max_abs_diff, train_checking_frozen
from .helpers import labelled_batch as batch

OPTIONS = LoRAOptions(lora_r=4, lora_alpha=8, lora_dropout=0.0)
TOLERANCE = 1e-5


def peft_name(scratch_name: str) -> str:
    """``base.<module>.lora_A.weight`` (scratch) -> ``base_model.model.<module>.lora_A.default.weight`` (peft)."""
    module, _, tensor = scratch_name[len("base."):].rpartition(".lora_")
    return f"{PEFT_KEY_PREFIX}{module}.lora_{tensor.replace('.weight', '.default.weight')}"


def randomize_lora_b(model: LoRAModel, seed: int = 1) -> None:
    """Give B non-zero values (it starts at zero), so the update shows in every output: std 0.1 makes entries of
    (alpha / r) B A up to about 0.15, larger than the tiny base's own weights (about 0.03 to 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.lora_layers():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=generator) * 0.1)
            if layer.use_dora:  # a magnitude away from its init ||W0||, so m / ||W0 + s B A|| is far from 1
                magnitude = layer.lora_magnitude_vector.weight
                magnitude.mul_(1 + 0.5 * torch.rand(magnitude.shape, generator=generator))


def scratch_and_library(options=OPTIONS, seed: int = 0):
    """Both implementations on identical tiny bases, built under the same seed, with the same (random) B."""
    torch.manual_seed(seed)
    scratch = build_scratch(build_tiny_model(), options)
    torch.manual_seed(seed)
    library = build_library(build_tiny_model(), options)
    randomize_lora_b(scratch)
    copy_lora_weights(scratch, library)
    return scratch, library


def copy_lora_weights(scratch: LoRAModel, library) -> None:
    """Give the peft model the scratch model's A and B (same dtype, checked)."""
    library_parameters = dict(library.named_parameters())
    with torch.no_grad():
        for name, tensor in scratch.delta_state_dict().items():
            assert tensor.dtype == library_parameters[peft_name(name)].dtype, name
            library_parameters[peft_name(name)].copy_(tensor)


def library_parameters_trained(library) -> list[str]:
    return [name for name, parameter in library.named_parameters() if parameter.requires_grad]


# --------------------------------------------------------------------------------------------- the layer itself
def test_lora_linear_computes_the_formula_around_the_original_weight():
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 12, bias=True)
    layer = LoRALinear(linear, rank=3, alpha=6.0)
    assert layer.base_layer is linear and layer.base_layer.weight is linear.weight  # W0 itself, not a copy
    assert not linear.weight.requires_grad and not linear.bias.requires_grad
    x = torch.randn(5, 16)
    assert torch.equal(layer(x), linear(x))  # B = 0: starts equal to the frozen layer
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    assert layer.lora_A.weight.abs().max() <= 1 / math.sqrt(16)  # Kaiming-uniform, a = sqrt(5): bound 1/sqrt(d_in)
    assert layer.lora_A.weight.std() > 0.5 / math.sqrt(3 * 16)

    torch.nn.init.normal_(layer.lora_B.weight)
    expected = linear(x) + (6.0 / 3) * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    assert max_abs_diff(layer(x), expected) < 1e-6
    assert max_abs_diff(layer.delta_weight(), 2.0 * layer.lora_B.weight @ layer.lora_A.weight) == 0


def test_dropout_acts_on_the_input_of_a_only():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(8, 8), rank=2, alpha=2, dropout=0.9)
    x = torch.randn(64, 8)
    layer.train()
    assert torch.equal(layer(x), layer.base_layer(x))  # B = 0: dropout never reaches the frozen path
    torch.nn.init.normal_(layer.lora_B.weight)
    assert not torch.allclose(layer(x), layer(x))
    layer.eval()
    assert torch.equal(layer(x), layer(x))


# -------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("targets", [["q", "v"], ["all-linear"], [".*decoder.*(q|v)"]], ids=["qv", "all", "regex"])
def test_scratch_and_peft_give_the_same_logits_loss_gradients_and_generations(tiny_tokenizer, targets, use_dora):
    options = LoRAOptions(lora_r=4, lora_alpha=8, lora_target_modules=targets, lora_use_dora=use_dora)
    torch.manual_seed(0)
    fresh_scratch = build_scratch(build_tiny_model(), options)
    torch.manual_seed(0)
    fresh_library = build_library(build_tiny_model(), options)
    fresh = dict(fresh_library.named_parameters())
    for name, tensor in fresh_scratch.delta_state_dict().items():  # same layers, same seed -> the same A draws
        assert torch.equal(tensor, fresh[peft_name(name)]), name

    scratch, library = scratch_and_library(options)
    scratch_layers = {name for name, _ in scratch.lora_layers()}
    library_layers = {name[len("model."):] for name, m in library.base_model.named_modules() if hasattr(m, "lora_A")}
    assert scratch_layers == library_layers
    if targets == ["all-linear"]:  # peft's own "all-linear" picks the same layers
        config = peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, target_modules="all-linear")
        own = peft.get_peft_model(build_tiny_model(), config)
        assert library_layers == {n[len("model."):] for n, m in own.base_model.named_modules() if hasattr(m, "lora_A")}

    inputs = batch(tiny_tokenizer)
    scratch.train(), library.train()
    scratch_output, library_output = scratch(**inputs), library(**inputs)
    logits_diff = max_abs_diff(scratch_output.logits, library_output.logits)
    loss_diff = abs(scratch_output.loss.item() - library_output.loss.item())
    scratch_output.loss.backward()
    library_output.loss.backward()
    library_parameters = dict(library.named_parameters())
    gradient_diff = 0.0
    for name in scratch.delta_parameter_names():
        scratch_grad = scratch.get_parameter(name).grad
        assert scratch_grad is not None and scratch_grad.abs().max() > 0, name
        gradient_diff = max(gradient_diff, max_abs_diff(scratch_grad, library_parameters[peft_name(name)].grad))
    print(f"\nmax abs diff: logits {logits_diff:.2e}, loss {loss_diff:.2e}, gradients {gradient_diff:.2e}")
    assert logits_diff <= TOLERANCE and loss_diff <= TOLERANCE and gradient_diff <= TOLERANCE
    assert len(scratch.delta_parameter_names()) == len(library_parameters_trained(library))

    scratch.eval(), library.eval()
    generate = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=4)
    assert torch.equal(scratch.generate(**generate), library.generate(**generate))


def test_lora_dropout_draws_the_same_masks_as_peft(tiny_tokenizer):
    scratch, library = scratch_and_library(LoRAOptions(lora_r=4, lora_alpha=8, lora_dropout=0.3))
    inputs = batch(tiny_tokenizer)
    scratch.train(), library.train()
    torch.manual_seed(7)
    scratch_logits = scratch(**inputs).logits
    torch.manual_seed(7)
    library_logits = library(**inputs).logits
    assert max_abs_diff(scratch_logits, library_logits) <= TOLERANCE
    torch.manual_seed(8)
    assert max_abs_diff(scratch(**inputs).logits, scratch_logits) > 1e-3  # dropout is really on


def test_over_a_bf16_base_lora_stays_fp32_and_matches_peft(tiny_tokenizer):
    torch.manual_seed(0)
    scratch = build_scratch(build_tiny_model().to(torch.bfloat16), OPTIONS)
    library = build_library(build_tiny_model().to(torch.bfloat16), OPTIONS)
    randomize_lora_b(scratch)
    copy_lora_weights(scratch, library)
    assert {tensor.dtype for tensor in scratch.delta_state_dict().values()} == {torch.float32}
    with torch.no_grad():
        scratch.eval(), library.eval()
        inputs = batch(tiny_tokenizer)
        scratch_logits, library_logits = scratch(**inputs).logits, library(**inputs).logits
    assert scratch_logits.dtype == torch.bfloat16
    assert torch.equal(scratch_logits, library_logits)


# ------------------------------------------------------------------------------------------ parameter counts
def lora_parameter_count(config, rank: int, targets: str) -> int:
    """The formula in docs/methods/lora.md: sum over adapted layers of r * (d_in + d_out)."""
    attentions = config.num_layers + 2 * config.num_decoder_layers  # encoder self; decoder self + cross
    feed_forwards = config.num_layers + config.num_decoder_layers
    inner = config.num_heads * config.d_kv
    qv = 2 * attentions * rank * (config.d_model + inner)
    if targets == "q,v":
        return qv
    qkvo = 2 * qv
    return qkvo + 2 * feed_forwards * rank * (config.d_model + config.d_ff)  # wi: d_model -> d_ff, wo: back


@requires_shared
@pytest.mark.parametrize("implementation", ["scratch", "library"])
@pytest.mark.parametrize(
    "targets, use_dora, expected", [("q,v", False, 294_912), ("all-linear", False, 1_081_344), ("q,v", True, 313_344)]
)
def test_trainable_parameters_on_t5_small_follow_the_formula(t5_small_path, implementation, targets, use_dora,
                                                               expected):
    config = AutoConfig.from_pretrained(t5_small_path)
    with torch.device("meta"):  # shapes only: no memory, no shared fixture mutated
        base = AutoModelForSeq2SeqLM.from_config(config)
    assert sum(p.numel() for p in base.parameters()) == 60_506_624
    if use_dora:  # DoRA's magnitude is computed from W0 at build time: it needs real (random) weights
        torch.manual_seed(0)
        base = AutoModelForSeq2SeqLM.from_config(config)
    options = LoRAOptions(lora_r=8, lora_target_modules=None if targets == "q,v" else targets, lora_use_dora=use_dora)
    model = get_method("lora").builder(implementation)(base, options)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    attentions = config.num_layers + 2 * config.num_decoder_layers
    magnitudes = 2 * attentions * config.d_model if use_dora else 0  # one per output row of q and v
    assert trainable == lora_parameter_count(config, 8, targets) + magnitudes == expected
    if implementation == "library":
        assert model.get_nb_trainable_parameters()[0] == expected


# ------------------------------------------------------------------------------------------- save and load
def test_save_writes_only_lora_weights_and_auto_class_restores_generations(tiny_base_dir, tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build_scratch(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), OPTIONS)
    randomize_lora_b(model)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", DELTA_WEIGHTS_NAME]
    saved = load_file(tmp_path / DELTA_WEIGHTS_NAME)
    assert len(saved) == 2 * 12 and all(name.endswith((".lora_A.weight", ".lora_B.weight")) for name in saved)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["model_type"], config["lora_r"], config["lora_alpha"]) == ("hf_peft_suite_lora", 4, 8)
    assert config["lora_target_modules"] == ["q", "v"]

    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert type(loaded) is LoRAModel
    model.eval()
    inputs = batch(tiny_tokenizer)
    assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
    generate = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=4)
    assert torch.equal(model.generate(**generate), loaded.generate(**generate))


def test_peft_model_save_and_load_restore_generations(tiny_tokenizer, tmp_path):
    _, library = scratch_and_library()
    library.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(build_tiny_model(), tmp_path)
    library.eval()
    inputs = batch(tiny_tokenizer)
    generate = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=4)
    assert torch.equal(library.generate(**generate), loaded.generate(**generate))


# ------------------------------------------------------------------------------------------------- merging
@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("targets", [["q", "v"], ["all-linear"]])
def test_merge_and_unload_gives_a_plain_t5_equal_to_the_lora_model(tiny_tokenizer, tmp_path, targets, use_dora):
    options = LoRAOptions(lora_r=4, lora_alpha=8, lora_target_modules=targets, lora_use_dora=use_dora)
    scratch, library = scratch_and_library(options)
    scratch.eval()
    inputs = batch(tiny_tokenizer)
    with torch.no_grad():
        expected = scratch(**inputs).logits
        merged = scratch.merge_and_unload()
        assert type(merged) is T5ForConditionalGeneration
        assert not list(lora_layers(merged))
        merged.eval()
        assert max_abs_diff(merged(**inputs).logits, expected) <= TOLERANCE
        assert torch.equal(scratch(**inputs).logits, expected)  # the LoRA model is left as it was

        merged.save_pretrained(tmp_path)
        reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
        assert type(reloaded) is T5ForConditionalGeneration
        assert torch.equal(reloaded(**inputs).logits, merged(**inputs).logits)

        library_merged = library.merge_and_unload()  # peft's merge of the same A and B
        library_merged.eval()
        assert max_abs_diff(library_merged(**inputs).logits, merged(**inputs).logits) <= TOLERANCE


def test_merge_in_place_then_unmerge(tiny_tokenizer):
    scratch, _ = scratch_and_library()
    scratch.eval()
    inputs = batch(tiny_tokenizer)
    frozen = {name: layer.base_layer.weight.clone() for name, layer in scratch.lora_layers()}
    with torch.no_grad():
        expected = scratch(**inputs).logits
        scratch.merge()
        assert scratch.merged
        assert max_abs_diff(scratch(**inputs).logits, expected) <= TOLERANCE
        with pytest.raises(RuntimeError, match="already merged"):  # a programming error, not the user's input
            scratch.merge()
        scratch.unmerge()
        assert not scratch.merged
        with pytest.raises(RuntimeError, match="not merged"):
            scratch.unmerge()
        assert max_abs_diff(scratch(**inputs).logits, expected) <= TOLERANCE
    for name, layer in scratch.lora_layers():  # the frozen weights come back exactly
        assert torch.equal(layer.base_layer.weight, frozen[name]), name


# ------------------------------------------------------------------------------------------------ training
def test_training_moves_only_lora_and_both_implementations_follow_the_same_loss_curve(tiny_tokenizer):
    torch.manual_seed(0)
    scratch = build_scratch(build_tiny_model(), OPTIONS)
    torch.manual_seed(0)
    library = build_library(build_tiny_model(), OPTIONS)  # same seed: the same starting A (B = 0 in both)
    inputs = batch(tiny_tokenizer, size=8)
    curves = [train_checking_frozen(model, inputs, learning_rate=1e-2) for model in (scratch, library)]
    assert all(losses[-1] < 0.7 * losses[0] for losses in curves), curves
    assert max(abs(a - b) for a, b in zip(*curves)) <= 1e-4, curves


# --------------------------------------------------------------------------------------------- peft interop
def test_export_to_peft_loads_with_peft_from_pretrained(tiny_base_dir, tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    scratch = build_scratch(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), OPTIONS)
    randomize_lora_b(scratch)
    export_to_peft(scratch, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    adapter = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (adapter["peft_type"], adapter["r"], adapter["lora_alpha"]) == ("LORA", 4, 8)
    assert adapter["base_model_name_or_path"] == str(tiny_base_dir)

    loaded = peft.PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), tmp_path)
    scratch.eval(), loaded.eval()
    inputs = batch(tiny_tokenizer)
    with torch.no_grad():
        assert max_abs_diff(scratch(**inputs).logits, loaded(**inputs).logits) <= TOLERANCE

    back = import_from_peft(tmp_path)  # the base comes from the adapter's base_model_name_or_path
    for name, tensor in scratch.delta_state_dict().items():
        assert torch.equal(back.delta_state_dict()[name], tensor), name


def test_import_from_peft_reproduces_a_peft_trained_adapter(tiny_tokenizer, tmp_path):
    _, library = scratch_and_library(LoRAOptions(lora_r=4, lora_alpha=8, lora_target_modules=["all-linear"]))
    library.save_pretrained(tmp_path)
    imported = import_from_peft(tmp_path, base_model=build_tiny_model())
    assert type(imported) is LoRAModel and imported.config.lora_target_modules == ["k", "o", "q", "v", "wi", "wo"]
    imported.eval(), library.eval()
    inputs = batch(tiny_tokenizer)
    with torch.no_grad():
        assert max_abs_diff(imported(**inputs).logits, library(**inputs).logits) <= TOLERANCE


def test_import_refuses_peft_features_plain_lora_lacks(tmp_path):
    _, library = scratch_and_library()
    library.save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    adapter = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**adapter, "use_rslora": True}))
    with pytest.raises(UsageError, match="use_rslora=True.*--implementation library"):
        import_from_peft(tmp_path, base_model=build_tiny_model())
    config_path.write_text(json.dumps(adapter))
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(UsageError, match="not a peft adapter folder"):
        import_from_peft(tmp_path, base_model=build_tiny_model())


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("rank", [0, -2])
def test_non_positive_rank_is_a_usage_error(rank):
    with pytest.raises(UsageError, match="--lora_r must be a positive integer"):
        LoRAOptions(lora_r=rank)
    # The module itself names its own argument: it knows nothing of the command line.
    with pytest.raises(ValueError, match="^rank must be a positive integer") as raised:
        LoRALinear(torch.nn.Linear(4, 4), rank=rank, alpha=16)
    assert not isinstance(raised.value, UsageError)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(lora_alpha=0), "--lora_alpha must be positive"),
        (dict(lora_dropout=1.0), r"--lora_dropout must be in \[0, 1\)"),
        (dict(lora_target_modules=["all-linear", "q"]), "use all-linear alone"),
        (dict(lora_target_modules=[]), "--lora_target_modules is empty"),
    ],
)
def test_other_bad_options_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message):
        LoRAOptions(**options)


@pytest.mark.parametrize("implementation", ["scratch", "library"])
def test_target_modules_that_match_nothing_are_a_usage_error(implementation):
    builder = get_method("lora").builder(implementation)
    with pytest.raises(UsageError, match="query matches no module.*named k, lm_head, o, q, v, wi, wo"):
        builder(build_tiny_model(), LoRAOptions(lora_target_modules=["query"]))
    with pytest.raises(UsageError, match="selects encoder.final_layer_norm, a T5LayerNorm"):
        builder(build_tiny_model(), LoRAOptions(lora_target_modules=["final_layer_norm"]))


def test_lora_on_a_lora_model_is_refused():
    model = build_scratch(build_tiny_model(), OPTIONS)
    with pytest.raises(UsageError, match="already has LoRA"):
        build_scratch(model.base, OPTIONS)


# --------------------------------------------------------------------------------------------------- DoRA
def test_dora_with_dropout_draws_the_same_masks_as_peft(tiny_tokenizer):
    scratch, library = scratch_and_library(LoRAOptions(lora_r=4, lora_alpha=8, lora_dropout=0.3, lora_use_dora=True))
    inputs = batch(tiny_tokenizer)
    scratch.train(), library.train()
    torch.manual_seed(7)
    scratch_output = scratch(**inputs)
    torch.manual_seed(7)
    library_output = library(**inputs)
    assert max_abs_diff(scratch_output.logits, library_output.logits) <= TOLERANCE
    scratch_output.loss.backward(), library_output.loss.backward()
    library_parameters = dict(library.named_parameters())
    for name in scratch.delta_parameter_names():
        assert max_abs_diff(scratch.get_parameter(name).grad, library_parameters[peft_name(name)].grad) <= TOLERANCE


def test_dora_starts_equal_to_the_base_and_its_magnitude_is_the_row_norm_of_w0(tiny_tokenizer):
    base = build_tiny_model()
    model = build_scratch(build_tiny_model(), LoRAOptions(lora_use_dora=True)).eval()
    for name, layer in model.lora_layers():
        norms = torch.linalg.norm(base.get_submodule(name).weight, dim=1)
        assert torch.allclose(layer.lora_magnitude_vector.weight, norms), name
    inputs = batch(tiny_tokenizer)
    with torch.no_grad():
        assert max_abs_diff(model(**inputs).logits, base.eval()(**inputs).logits) <= 1e-6


def test_dora_exports_to_peft_and_imports_back(tiny_base_dir, tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    scratch = build_scratch(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), LoRAOptions(lora_use_dora=True))
    randomize_lora_b(scratch)
    export_to_peft(scratch, tmp_path)
    adapter = json.loads((tmp_path / "adapter_config.json").read_text())
    assert adapter["use_dora"] is True
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert sum(key.endswith(".lora_magnitude_vector") for key in keys) == 12  # peft's own file names
    loaded = peft.PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), tmp_path)
    assert eval_logits_diff(scratch, loaded, tiny_tokenizer) <= TOLERANCE
    back = import_from_peft(tmp_path)
    assert back.config.lora_use_dora is True
    assert all(torch.equal(back.delta_state_dict()[n], t) for n, t in scratch.delta_state_dict().items())


# ----------------------------------------------------------------------- targets that round-trip unchanged
@pytest.mark.parametrize(
    "targets", [["EncDecAttention.q"], ["SelfAttention.q", "EncDecAttention.v"], r".*decoder.*SelfAttention\.(q|v)"]
)
def test_dotted_and_regex_targets_round_trip_through_peft_unchanged(tiny_base_dir, tiny_tokenizer, tmp_path, targets):
    option = [targets] if isinstance(targets, str) else targets
    torch.manual_seed(0)
    scratch = build_scratch(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), LoRAOptions(lora_target_modules=option))
    randomize_lora_b(scratch)
    assert scratch.config.lora_target_modules == (targets if isinstance(targets, str) else targets)
    export_to_peft(scratch, tmp_path / "peft")
    saved = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["target_modules"]
    unordered = (lambda spec: spec) if isinstance(targets, str) else sorted  # peft saves a list as a set
    assert unordered(saved) == unordered(targets)
    back = import_from_peft(tmp_path / "peft")
    assert sorted(back.lora_module_names) == sorted(scratch.lora_module_names)
    assert unordered(back.config.lora_target_modules) == unordered(targets)
    scratch.eval(), back.eval()
    inputs = batch(tiny_tokenizer)
    with torch.no_grad():
        assert torch.equal(back(**inputs).logits, scratch(**inputs).logits)
    # peft itself, given the same specification, adapts the same layers
    library = build_library(build_tiny_model(), LoRAOptions(lora_target_modules=option))
    peft_layers = {name[len("model."):] for name, m in library.base_model.named_modules() if hasattr(m, "lora_A")}
    assert peft_layers == set(scratch.lora_module_names)


@pytest.mark.parametrize(
    "targets, message",
    [([".*q", "v"], "a regular expression.*must stand alone"), (["(q|v"], "not a valid regular expression")],
)
def test_bad_regular_expressions_are_usage_errors(targets, message):
    with pytest.raises(UsageError, match=message):
        LoRAOptions(lora_target_modules=targets)


# ------------------------------------------------------------------------------------------ tied weights
def test_merging_into_a_tied_lm_head_is_refused_and_changes_nothing(tiny_tokenizer):
    model = build_scratch(build_tiny_model(), LoRAOptions(lora_target_modules=["q", "lm_head"]))
    assert model.base.lm_head.weight is model.base.shared.weight  # t5-small ties its LM head to the embeddings
    randomize_lora_b(model)
    model.eval()
    inputs = batch(tiny_tokenizer)
    with torch.no_grad():
        before = model(**inputs).logits
    for merge in (model.merge, model.merge_and_unload):
        with pytest.raises(UsageError, match="cannot merge into lm_head: its weight is tied to shared.weight"):
            merge()
    assert not model.merged
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)
