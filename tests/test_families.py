"""Every method x implementation on every encoder-decoder family: T5 (t5-small's layout), T5 v1.1 / flan-t5
(gated-gelu, untied, attention width != d_model), mT5 and BART, on tiny random models built from configs.

For each family and method: the scratch and library models, holding the same (perturbed) delta, give the same logits,
loss, gradients and greedy generations; the scratch delta saves and loads back through ``AutoModelForSeq2SeqLM``;
it exports to the library's format and loads there, and the library's own artifact imports into scratch. Default
targets follow peft's per-model tables. A family none of a method's placements know is refused in one line that
names the supported ones.

Tolerance: 1e-5, relative to the largest logit where logits exceed 1 in size (untied T5 v1.1 / mT5 heads give logits
near 100, where fp32 rounding alone is ~1e-5; AdapterHub's T5 code rounds differently from transformers' own).
"""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

import hf_peft_suite  # noqa: F401  (registers the delta models with the Auto classes)
from hf_peft_suite.errors import UsageError
from hf_peft_suite.methods import get_method, ia3, lora, prefix_tuning, prompt_tuning
from hf_peft_suite.methods import adapter as adapter_method
from hf_peft_suite.methods.architectures import FAMILIES as KNOWN_FAMILIES
from hf_peft_suite.methods.peft_files import PEFT_KEY_PREFIX

from .conftest import cell_param, requires_adapterhub
from .families import FAMILIES, build_family_model
from .helpers import labelled_batch, max_abs_diff

TOLERANCE = 1e-5


def peft_parameter(scratch_name: str) -> str:
    """A LoRA/DoRA/(IA)³ scratch parameter's name in the peft model: the adapter name ``default`` put back."""
    path = PEFT_KEY_PREFIX + scratch_name.removeprefix("base.")
    if path.endswith(".ia3_l"):
        return f"{path}.default"
    module, _, tensor = path.rpartition(".lora_")
    head, _, kind = tensor.rpartition(".")
    return f"{module}.lora_{head}.default.{kind}"


# method case -> (method, options, scratch name -> library name)
CASES = {
    "prompt_tuning": ("prompt_tuning", prompt_tuning.PromptTuningOptions(num_virtual_tokens=4, prompt_init="random"),
                      lambda name: "prompt_encoder.default.embedding.weight"),
    "prefix_tuning": ("prefix_tuning", prefix_tuning.PrefixTuningOptions(prefix_num_virtual_tokens=4),
                      lambda name: name.replace("prefix_encoder.", "prompt_encoder.default.")),
    "adapter-seq_bn": ("adapter", adapter_method.AdapterOptions(adapter_reduction_factor=4),
                       adapter_method.adapterhub_name),
    "adapter-double_seq_bn": ("adapter", adapter_method.AdapterOptions(adapter_config="double_seq_bn",
                                                                       adapter_reduction_factor=4),
                              adapter_method.adapterhub_name),
    "lora": ("lora", lora.LoRAOptions(lora_r=4), peft_parameter),
    "dora": ("lora", lora.LoRAOptions(lora_r=4, lora_use_dora=True), peft_parameter),
    "ia3": ("ia3", ia3.IA3Options(), peft_parameter),
}


def library_marks(case: str):
    return [requires_adapterhub] if CASES[case][0] == "adapter" else []


def pair(family: str, case: str):
    """Scratch and library models of ``case`` on the same tiny ``family`` base, holding the same perturbed delta."""
    method, options, library_name = CASES[case]
    chosen = get_method(method)
    torch.manual_seed(0)
    scratch = chosen.build_scratch(build_family_model(family), copy.deepcopy(options))
    torch.manual_seed(0)
    library = chosen.build_library(build_family_model(family), copy.deepcopy(options))
    generator = torch.Generator().manual_seed(1)
    library_parameters = dict(library.named_parameters())
    with torch.no_grad():
        for name in scratch.delta_parameter_names():
            parameter = scratch.get_parameter(name)
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
            library_parameters[library_name(name)].copy_(parameter)
    return scratch, library


def tolerance(logits: torch.Tensor) -> float:
    return TOLERANCE * max(1.0, logits.abs().max().item())


def generations(model, inputs):
    return model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=3,
                          suppress_tokens=[0, 1])


# method -> (export the scratch delta to the library's format, load such a folder with the library, import one)
def load_with_peft(base, folder):
    model = peft.PeftModel.from_pretrained(base, folder)
    prefix_tuning.fix_peft_prefix_generation(model)
    return model


def load_with_adapterhub(base, folder):
    import adapters

    adapters.init(base)
    base.load_adapter(str(folder), set_active=True, use_safetensors=True)
    return base


INTEROP = {
    "prompt_tuning": (prompt_tuning.export_to_peft, load_with_peft, prompt_tuning.import_from_peft),
    "prefix_tuning": (prefix_tuning.export_to_peft, load_with_peft, prefix_tuning.import_from_peft),
    "adapter": (adapter_method.export_to_adapterhub, load_with_adapterhub, adapter_method.import_from_adapterhub),
    "lora": (lora.export_to_peft, load_with_peft, lora.import_from_peft),
    "ia3": (ia3.export_to_peft, load_with_peft, ia3.import_from_peft),
}


@pytest.mark.parametrize("case", [pytest.param(case, marks=library_marks(case)) for case in CASES])
@pytest.mark.parametrize("family", FAMILIES)
def test_scratch_equals_library_and_every_artifact_path_round_trips_on_every_family(family, case, tiny_tokenizer,
                                                                                     tmp_path):
    method = CASES[case][0]
    scratch, library = pair(family, case)
    inputs = labelled_batch(tiny_tokenizer)
    scratch.train(), library.train()
    scratch_output, library_output = scratch(**inputs), library(**inputs)
    scratch_output.loss.backward(), library_output.loss.backward()
    allowed = tolerance(scratch_output.logits)
    assert max_abs_diff(scratch_output.logits, library_output.logits) <= allowed
    assert abs(scratch_output.loss.item() - library_output.loss.item()) <= TOLERANCE
    library_parameters, library_name = dict(library.named_parameters()), CASES[case][2]
    for name in scratch.delta_parameter_names():
        gradient = scratch.get_parameter(name).grad
        assert max_abs_diff(gradient, library_parameters[library_name(name)].grad) <= TOLERANCE, name
    with torch.no_grad():
        base = build_family_model(family)(**inputs).logits
    assert max_abs_diff(scratch_output.logits, base) > 1e-3, "the delta must change the outputs"
    scratch.eval(), library.eval()
    expected_generations = generations(scratch, inputs)
    assert torch.equal(expected_generations, generations(library, inputs))

    # Every artifact path: the scratch delta through the Auto class, the scratch delta exported to the library's
    # format and loaded there, the library's own artifact imported into scratch.
    export, load, import_ = INTEROP[method]
    with torch.no_grad():
        expected = scratch(**inputs).logits
    scratch.save_pretrained(tmp_path / "scratch")
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "scratch", base_model=build_family_model(family)).eval()
    export(scratch, tmp_path / "exported")
    in_library = load(build_family_model(family), tmp_path / "exported").eval()
    get_method(method).library_format.save(library, str(tmp_path / "library"))
    imported = import_(tmp_path / "library", build_family_model(family)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected)
        assert max_abs_diff(in_library(**inputs).logits, expected) <= allowed
        assert max_abs_diff(imported(**inputs).logits, expected) <= allowed
    assert torch.equal(generations(in_library, inputs), expected_generations)
    assert torch.equal(generations(imported, inputs), expected_generations)


# ------------------------------------------------------------------------------------------- default targets
def adapted(model, attribute: str) -> set[str]:
    return {name.removeprefix("base_model.model.").removeprefix("base.") for name, module in model.named_modules()
            if hasattr(module, attribute) and not name.endswith(attribute)}


@pytest.mark.parametrize("family", FAMILIES)
def test_default_targets_are_peft_defaults_on_every_family(family):
    """Without targets, both implementations adapt what peft's own default config adapts for the model type."""
    defaults = KNOWN_FAMILIES[build_family_model(family).config.model_type]
    own_lora = peft.get_peft_model(build_family_model(family), peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=2))
    own_ia3 = peft.get_peft_model(build_family_model(family), peft.IA3Config(task_type="SEQ_2_SEQ_LM"))
    for method, attribute, own in (("lora", "lora_A", own_lora), ("ia3", "ia3_l", own_ia3)):
        chosen = get_method(method)
        scratch = chosen.build_scratch(build_family_model(family), chosen.options())
        library = chosen.build_library(build_family_model(family), chosen.options())
        expected = adapted(own, attribute)
        assert expected and adapted(scratch, attribute) == adapted(library, attribute) == expected, method
        assert {name.rsplit(".", 1)[-1] for name in expected} == set(getattr(defaults, f"{method}_targets"))
    feedforward = {name for name, module in own_ia3.named_modules() if getattr(module, "is_feedforward", False)}
    scratch = ia3.build_scratch(build_family_model(family))
    assert {f"base_model.model.{name}" for name, layer in scratch.adapted_layers() if layer.feedforward} == feedforward


@pytest.mark.parametrize("family", FAMILIES)
def test_merging_an_lm_head_is_exact_when_untied_and_refused_when_tied(family, tiny_tokenizer):
    model = lora.build_scratch(build_family_model(family), lora.LoRAOptions(lora_target_modules=["lm_head"]))
    with torch.no_grad():
        for _, layer in model.lora_layers():
            layer.lora_B.weight.normal_(std=0.1)
    model.eval()
    inputs = labelled_batch(tiny_tokenizer)
    with torch.no_grad():
        expected = model(**inputs).logits
    if model.base.get_output_embeddings().weight is model.base.get_input_embeddings().weight:  # t5, bart (t5 v1.1 on 5.x)
        with pytest.raises(UsageError, match="cannot merge into lm_head: its weight is tied"):
            model.merge_and_unload()
        return
    with torch.no_grad():
        assert max_abs_diff(model.merge_and_unload().eval()(**inputs).logits, expected) <= tolerance(expected)


# ------------------------------------------------------------------------------------------- other families
def tiny_marian():
    """An encoder-decoder family no placement here knows (MarianMT)."""
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(0)
    return MarianMTModel(MarianConfig(
        vocab_size=71, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, max_position_embeddings=64,
    ))


UNSUPPORTED = [cell_param(method, implementation) for method in ("adapter", "prefix_tuning", "lora", "ia3")
               for implementation in ("scratch", "library")]


@pytest.mark.parametrize(("method", "implementation"), UNSUPPORTED)
def test_a_family_without_a_description_gets_one_error_naming_the_supported_ones(method, implementation):
    chosen = get_method(method)
    with pytest.raises(UsageError) as raised:
        chosen.builder(implementation)(tiny_marian(), chosen.options())
    message = str(raised.value)
    assert message.startswith(f"--method {method}") and "\n" not in message
    assert "T5 (t5-small" in message and "mT5" in message and "BART" in message
    assert "MarianMTModel (model_type 'marian')" in message


def test_with_explicit_targets_lora_and_ia3_work_on_any_family_and_prompt_tuning_needs_none(tiny_tokenizer):
    inputs = labelled_batch(tiny_tokenizer)
    for model in (
        lora.build_scratch(tiny_marian(), lora.LoRAOptions(lora_target_modules=["q_proj", "v_proj"])),
        ia3.build_scratch(tiny_marian(), ia3.IA3Options(ia3_target_modules=["k_proj", "v_proj", "fc2"],
                                                         ia3_feedforward_modules=["fc2"])),
        prompt_tuning.build_soft_prompt_model(tiny_marian(), prompt_tuning.PromptTuningOptions(num_virtual_tokens=2)),
    ):
        assert model(**inputs).loss.isfinite()


@pytest.mark.slow
def test_every_installed_cell_runs_through_the_pipeline_on_bart(tmp_path):
    """``--method all`` on a BART folder (with the tiny tokenizer): every cell trains, evaluates and saves."""
    import json

    from hf_peft_suite.cli import main
    from hf_peft_suite.comparison import comparison_cells

    build_family_model("bart").save_pretrained(tmp_path / "bart")
    output_dir = tmp_path / "all"
    assert main(["--preset", "tiny", "--model_name_or_path", str(tmp_path / "bart"), "--tokenizer_name_or_path",
                 "builtin:tiny-t5", "--method", "all", "--max_steps", "3", "--max_train_samples", "96",
                 "--max_eval_samples", "16", "--eval_strategy", "no", "--no_figures",  # (test_figures.py's)
                 "--output_dir", str(output_dir)]) == 0
    rows = json.loads((output_dir / "comparison.json").read_text())
    assert {(row["method"], row["implementation"]) for row in rows if row["status"] == "ok"} == set(
        comparison_cells()[0])
