"""Loading scratch artifacts through the Auto classes with the arguments users pass (transformers 4.57 and 5.25).

transformers 5.25's Auto classes pass ``_from_auto`` to a registered class's ``from_pretrained``; a scratch delta that
forwarded its keyword arguments to the base's loader passed it twice (TypeError), so every scratch artifact failed to
load. Everything here runs as a user runs it, on tiny models and real files.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from hf_peft_suite.experiment import run_experiment
from hf_peft_suite.methods import METHODS, build_method_model
from hf_peft_suite.methods.delta import DeltaModel, split_loading_kwargs
from hf_peft_suite.methods.lora import LoRAOptions

from .helpers import labelled_batch


SCRATCH_DELTAS = {
    "prompt_tuning": None, "adapter": None, "lora": None, "dora": LoRAOptions(lora_use_dora=True), "ia3": None,
    "prefix_tuning": None,
}
HUB_ARGUMENTS = {"revision": "main", "local_files_only": True, "token": None, "device_map": None}


def saved_scratch_model(name, base_dir, tokenizer, folder):
    """A scratch model of ``name`` on the tiny base, its delta moved off its initial values, saved to ``folder``."""
    base = AutoModelForSeq2SeqLM.from_pretrained(base_dir)
    model = build_method_model(base, "lora" if name == "dora" else name, "scratch", SCRATCH_DELTAS[name], tokenizer)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(folder)
    return model.eval()


def test_every_scratch_method_is_in_this_list():
    scratch_deltas = {name for name, method in METHODS.items() if name != "full"}
    assert scratch_deltas | {"dora"} == set(SCRATCH_DELTAS)


@pytest.mark.parametrize("name", list(SCRATCH_DELTAS))
def test_every_scratch_artifact_loads_through_the_auto_class_with_hub_arguments(name, tiny_base_dir, tiny_tokenizer,
                                                                                  tmp_path):
    model = saved_scratch_model(name, tiny_base_dir, tiny_tokenizer, tmp_path / "artifact")
    batch = labelled_batch(tiny_tokenizer)
    expected = model(**batch).logits

    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "artifact", cache_dir=str(tmp_path / "cache"),
                                                   dtype=torch.float32, **HUB_ARGUMENTS)
    assert type(loaded) is type(model) and isinstance(loaded, DeltaModel)
    assert torch.equal(loaded(**batch).logits, expected)
    generate = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "max_new_tokens": 3}
    assert torch.equal(loaded.generate(**generate), model.generate(**generate))

    half = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "artifact", torch_dtype=torch.bfloat16, **HUB_ARGUMENTS)
    assert half.base.dtype == torch.bfloat16  # the base as asked; the delta stays float32, as peft keeps adapters
    assert {half.get_parameter(n).dtype for n in half.delta_parameter_names()} == {torch.float32}
    # What the arguments asked for, by hand: the delta loaded onto a bfloat16 base the caller passes.
    bf16_base = AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir, dtype=torch.bfloat16)
    reference = type(model).from_pretrained(tmp_path / "artifact", base_model=bf16_base)
    assert torch.equal(half(**batch).logits, reference(**batch).logits)
    assert torch.equal(half.generate(**generate), reference.generate(**generate))


def test_the_base_gets_the_hub_access_but_not_the_deltas_location_or_the_auto_classes_bookkeeping():
    delta, base = split_loading_kwargs({
        "_from_auto": True, "_commit_hash": "abc", "trust_remote_code": True, "adapter_kwargs": {},
        "code_revision": "x", "revision": "v1", "subfolder": "s", "cache_dir": "/c", "token": "t",
        "local_files_only": True, "dtype": torch.bfloat16, "device_map": "cpu",
    })
    assert delta == {"cache_dir": "/c", "token": "t", "local_files_only": True, "revision": "v1", "subfolder": "s"}
    assert base == {"cache_dir": "/c", "token": "t", "local_files_only": True, "dtype": torch.bfloat16,
                    "device_map": "cpu"}


def test_scratch_gradient_checkpointing_takes_what_trainer_passes(tmp_path):
    """Trainer 5.25 calls ``gradient_checkpointing_enable(gradient_checkpointing_kwargs, every_n_layers=...,
    offload=...)``; a scratch model hands whatever it is given to its base."""
    results = run_experiment(preset="tiny", method="lora", max_steps=2, gradient_checkpointing=True,
                             output_dir=str(tmp_path / "run"))
    assert results["config"]["training"]["gradient_checkpointing"] is True
    assert results["history"]
