"""The shared delta wrapper: frozen base, delta-only safetensors artifacts, Auto-class loading, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM

from hf_peft_suite.errors import UsageError
from hf_peft_suite.methods.delta import (
    DELTA_WEIGHTS_NAME,
    DeltaConfig,
    DeltaModel,
    delta_config_kwargs,
    register_delta_model,
)


class BiasDeltaConfig(DeltaConfig):
    """A test-only method: a learned bias added to the LM head's logits."""

    model_type = "hf_peft_suite_test_bias"


class BiasDeltaModel(DeltaModel):
    config_class = BiasDeltaConfig

    def __init__(self, config, base_model=None):
        super().__init__(config, base_model)
        self.logit_bias = torch.nn.Parameter(torch.zeros(self.base.config.vocab_size))

    def adapter_params(self) -> list[str]:  # the DeltaModule protocol: the wrapper's own parameter is the delta
        return ["logit_bias"]

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        output = super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        output.logits = output.logits + self.logit_bias
        return output


register_delta_model(BiasDeltaConfig, BiasDeltaModel)


@pytest.fixture
def wrapped(tiny_base_dir):
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir)
    model = BiasDeltaModel(BiasDeltaConfig(**delta_config_kwargs(base)), base)
    with torch.no_grad():
        model.logit_bias.normal_()
    return model


def batch(tokenizer):
    inputs = tokenizer(["the movie was great", "awful boring film"], return_tensors="pt", padding=True)
    inputs["labels"] = tokenizer(["positive", "negative"], return_tensors="pt", padding=True).input_ids
    return inputs


def test_base_is_frozen_and_only_the_delta_trains(wrapped):
    trainable = [name for name, parameter in wrapped.named_parameters() if parameter.requires_grad]
    assert trainable == ["logit_bias"] == wrapped.delta_parameter_names()


def test_save_writes_only_the_delta_and_auto_class_restores_outputs(wrapped, tiny_tokenizer, tmp_path):
    wrapped.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", DELTA_WEIGHTS_NAME]
    assert list(load_file(tmp_path / DELTA_WEIGHTS_NAME)) == ["logit_bias"]
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "hf_peft_suite_test_bias"

    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert type(loaded) is BiasDeltaModel
    wrapped.eval()
    inputs = batch(tiny_tokenizer)
    assert torch.equal(wrapped(**inputs).logits, loaded(**inputs).logits)


def test_base_named_by_a_relative_folder_is_found_beside_the_artifact_or_its_parent(wrapped, tmp_path):
    wrapped.base.save_pretrained(tmp_path / "base_model")
    wrapped.config.base_model_name_or_path = "base_model"
    wrapped.save_pretrained(tmp_path / "checkpoint-10")
    loaded = BiasDeltaModel.from_pretrained(tmp_path / "checkpoint-10")
    assert torch.equal(loaded.logit_bias, wrapped.logit_bias)


def test_truncated_weights_file_is_refused_with_a_clear_error(wrapped, tmp_path):
    wrapped.save_pretrained(tmp_path)
    weights = tmp_path / DELTA_WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-40])
    with pytest.raises(UsageError, match="corrupted or truncated"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path)


def test_weights_of_another_shape_are_refused(wrapped, tmp_path):
    from safetensors.torch import save_file

    wrapped.save_pretrained(tmp_path)
    save_file({"logit_bias": torch.zeros(3)}, tmp_path / DELTA_WEIGHTS_NAME)
    with pytest.raises(UsageError, match="shape"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path)


def test_loading_onto_a_base_of_another_architecture_is_refused(wrapped, tmp_path):
    from transformers import T5ForConditionalGeneration

    from hf_peft_suite.tiny import tiny_t5_config

    wrapped.save_pretrained(tmp_path)
    other = T5ForConditionalGeneration(tiny_t5_config().__class__(**{**tiny_t5_config().to_dict(), "d_model": 32}))
    with pytest.raises(UsageError, match="another base model.*d_model 64"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path, base_model=other)


def test_generate_runs_through_the_wrapper(wrapped, tiny_tokenizer):
    inputs = batch(tiny_tokenizer)
    generated = wrapped.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=2)
    assert generated.shape == (2, 3)  # decoder start + 2 new tokens


def test_a_parameter_trained_but_not_declared_is_a_bug_not_a_silent_loss(wrapped, tmp_path):
    wrapped.extra = torch.nn.Parameter(torch.zeros(3))  # trainable, but no DeltaModule names it
    with pytest.raises(RuntimeError, match="trains parameters no DeltaModule declares: \\['extra'\\]"):
        wrapped.save_pretrained(tmp_path)


SCRATCH_CELLS = {
    "prompt_tuning": {"num_virtual_tokens": 4},
    "adapter": {"adapter_reduction_factor": 4},
    "lora": {"lora_r": 4},
    "ia3": {},
    "prefix_tuning": {"prefix_num_virtual_tokens": 4},
}


@pytest.mark.parametrize("method", list(SCRATCH_CELLS))
def test_a_deep_copy_of_every_scratch_cell_saves_exactly_its_delta_and_loads_back_equal(
    method, tiny_base_dir, tiny_tokenizer, tmp_path
):
    """Deltas are found by name (the DeltaModule protocol), not by the identity of the base's parameters, so a copy
    (or a re-wrapped model) saves the same tensors as the original, and they load back to the same outputs."""
    import copy

    from hf_peft_suite.methods import get_method

    chosen = get_method(method)
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir)
    base.name_or_path = base.config._name_or_path = str(tiny_base_dir)
    model = chosen.build_scratch(base, chosen.options(**SCRATCH_CELLS[method]), tiny_tokenizer)
    with torch.no_grad():
        for name in model.delta_parameter_names():
            model.get_parameter(name).normal_(std=0.5)  # a trained-looking delta, so equal outputs mean something
    duplicate = copy.deepcopy(model)
    model.save_pretrained(tmp_path / "original")
    duplicate.save_pretrained(tmp_path / "copy")
    original_tensors, copied_tensors = (load_file(tmp_path / folder / DELTA_WEIGHTS_NAME)
                                        for folder in ("original", "copy"))
    assert sorted(copied_tensors) == sorted(original_tensors) == sorted(model.delta_parameter_names())
    assert 0 < len(copied_tensors) < len(dict(model.named_parameters()))
    assert all(torch.equal(copied_tensors[name], original_tensors[name]) for name in original_tensors)

    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "copy").eval()
    model.eval()
    inputs = batch(tiny_tokenizer)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
        fresh_base = AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir).eval()  # the method changed `base` in place
        assert not torch.equal(loaded(**inputs).logits, fresh_base(**inputs).logits)
