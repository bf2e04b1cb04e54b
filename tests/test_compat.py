"""The compatibility contract (hf_peft_suite/compat.py): the declared versions are the tested ones, every library
internal the package relies on is as it uses it, scratch artifacts load through the Auto classes with the arguments
users pass, and a library outside the tested window is said, or refused, in one line.

Two tests change what the installed libraries report, since no other version can be installed inside a test: one
removes a ``Trainer`` method for the length of the test (``monkeypatch.delattr``), and one makes
:func:`hf_peft_suite.compat.installed_version` report transformers 5.26.0. Everything else runs as a user runs it.
"""

from __future__ import annotations

import configparser
import json
import re

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from hf_peft_suite import compat
from hf_peft_suite.cli import main
from hf_peft_suite.experiment import run_experiment
from hf_peft_suite.methods import METHODS, library_problem
from hf_peft_suite.methods.delta import DeltaModel, split_loading_kwargs

from .conftest import REPO_ROOT, SKIPS, outside_newest_probe
from .helpers import SCRATCH_DELTAS, labelled_batch, scratch_delta_model


# ------------------------------------------------------------------------------------- declared = tested
def declared_requirements() -> dict[str, str]:
    """setup.cfg's requirements, install_requires and extras together: name -> specifier (``>=4.57.6,<5.26``)."""
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra in config["options.extras_require"].values():
        lines += extra.splitlines()
    requirements = {}
    for line in filter(None, (line.strip() for line in lines)):
        name, specifier = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", line).groups()
        requirements[name.lower()] = specifier.replace(" ", "")
    return requirements


def lowest_pins() -> dict[str, str]:
    """.ci/lowest.txt: name -> the version CI's full environment installs."""
    pins = {}
    for line in (REPO_ROOT / ".ci" / "lowest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.mark.parametrize("library", sorted(compat.TESTED))
def test_setup_cfg_caps_each_library_whose_internals_are_used_at_the_tested_window(library):
    lowest, cap = compat.TESTED[library]
    assert declared_requirements()[library] == f">={lowest},<{cap}"
    assert compat.tested_requirement(library) == f"{library}>={lowest},<{cap}"


def test_every_lower_bound_is_the_version_ci_pins_in_the_full_environment():
    pins, bounded = lowest_pins(), 0
    for name, specifier in declared_requirements().items():
        lower = re.search(r">=([0-9][0-9.]*)", specifier)
        if lower:
            bounded += 1
            assert pins.get(name) == lower.group(1), f"setup.cfg says {name}{specifier}; .ci/lowest.txt must pin it"
    assert bounded >= 8 and set(pins) <= set(declared_requirements()) | {"torch"}


@outside_newest_probe
def test_the_installed_libraries_are_inside_the_tested_window():
    assert compat.outside_tested_versions() == []


def test_the_tested_window_reads_as_versions():
    assert compat.tested_range("transformers") == "4.57.6 to 5.25.x"
    assert compat.tested_range("peft").endswith(".x")


# -------------------------------------------------------------------------------------------- internals
def installed(library: str) -> bool:
    return compat.installed_version(library) is not None


INTERNAL_IDS = [f"{internal.library}-{index}" for index, internal in enumerate(compat.INTERNALS)]


# AdapterHub's internals are checked wherever it is installed, whether or not it still works with the package (a changed
# internal must fail here, not skip); where it is not (the latest environment), with the AdapterHub cell's reason.
# DeepSpeed's are checked where it is installed; here it is not (SKIPS["deepspeed"]).
ADAPTERHUB_ABSENT = pytest.mark.skipif(not installed("adapters"), reason=SKIPS["adapterhub"].reason)
DEEPSPEED_ABSENT = pytest.mark.skipif(SKIPS["deepspeed"].holds, reason=SKIPS["deepspeed"].reason)
ABSENT = {"adapters": [ADAPTERHUB_ABSENT], "deepspeed": [DEEPSPEED_ABSENT]}


@pytest.mark.parametrize("internal", [
    pytest.param(internal, id=name, marks=ABSENT.get(internal.library, []))
    for name, internal in zip(INTERNAL_IDS, compat.INTERNALS)
])
def test_each_internal_is_as_the_package_uses_it(internal):
    problem = internal.check() if internal.check is not None else None
    assert problem is None, compat.incompatible(internal.library, problem)


@pytest.mark.parametrize("internal", compat.INTERNALS, ids=INTERNAL_IDS)
def test_each_internal_names_tests_that_exist(internal):
    assert internal.tests and internal.needed_for in ("training", "loading")
    for test in internal.tests:
        file, function = test.split("::")
        source = (REPO_ROOT / "tests" / file).read_text()
        assert re.search(rf"^def {re.escape(function)}\(", source, re.M), f"{test} (for {internal.api}) is gone"


def test_the_contract_covers_every_private_trainer_method_the_trainer_overrides():
    """Every private Trainer method any class of the package's trainer overrides (the trainer and its mixins)."""
    from hf_peft_suite import trainer

    ours = [cls for cls in trainer.GenerationAccuracyTrainer.__mro__ if cls.__module__.startswith("hf_peft_suite.")]
    overridden = {name for cls in ours for name, value in vars(cls).items()
                  if name.startswith("_") and not name.startswith("__") and callable(value)
                  and hasattr(trainer.Seq2SeqTrainer, name)}
    listed = " ".join(internal.api for internal in compat.INTERNALS)
    assert {cls.__name__ for cls in ours} == {"GenerationAccuracyTrainer", "ArtifactCheckpoints", "SeededSampling"}
    assert overridden and all(f"Trainer.{name}(" in listed for name in overridden), overridden
    assert "_load_best_model" in overridden and "get_batch_samples" in listed


def test_a_removed_trainer_method_stops_a_run_with_one_error_line_before_anything_is_written(
        monkeypatch, tmp_path, capsys):
    from transformers import Trainer

    monkeypatch.delattr(Trainer, "_load_rng_state")  # as a release that renamed it would have it
    output_dir = tmp_path / "run"
    assert main(["--preset", "tiny", "--max_steps", "1", "--output_dir", str(output_dir)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: transformers ")
    assert "Trainer._load_rng_state is missing" in lines[0]
    assert "tested: 4.57.6 to 5.25.x; pip install 'transformers>=4.57.6,<5.26'" in lines[0]
    assert not output_dir.exists()


def test_a_changed_peft_internal_refuses_its_library_cells_and_leaves_the_scratch_ones(monkeypatch):
    from peft import PeftModel

    monkeypatch.delattr(PeftModel, "get_prompt")
    problem = library_problem(METHODS["prefix_tuning"])
    assert problem.startswith("--method prefix_tuning --implementation library: peft ")
    assert "PeftModel.get_prompt is missing" in problem and "tested: 0.18.0 to" in problem
    assert "PeftModel.get_prompt is missing" in library_problem(METHODS["lora"])  # one peft for every peft cell
    METHODS["prefix_tuning"].builder("scratch")  # the scratch cell needs no peft


# ------------------------------------------------------------------------------ loading through the Auto classes
HUB_ARGUMENTS = {"revision": "main", "local_files_only": True, "token": None, "device_map": None}


def saved_scratch_model(name, base_dir, tokenizer, folder):
    """A scratch model of ``name`` on the tiny base, its delta moved off its initial values, saved to ``folder``."""
    model = scratch_delta_model(name, AutoModelForSeq2SeqLM.from_pretrained(base_dir), tokenizer)
    model.save_pretrained(folder)
    return model


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


def test_the_4_57_spellings_of_group_by_length_and_warmup_ratio_take_effect(tmp_path):
    """5.x spells them ``train_sampling_strategy="group_by_length"`` and ``warmup_steps`` < 1; both work on both."""
    from hf_peft_suite.arguments import parse_arguments
    from hf_peft_suite.trainer import EpochSeededLengthGroupedSampler

    args = parse_arguments(["--preset", "tiny", "--group_by_length", "true", "--warmup_ratio", "0.25",
                            "--output_dir", str(tmp_path / "run")]).training
    assert args.get_warmup_steps(100) == 25
    assert getattr(args, "train_sampling_strategy", "group_by_length") == "group_by_length"
    results = run_experiment(preset="tiny", method="lora", max_steps=2, group_by_length=True, warmup_ratio=0.5,
                             output_dir=str(tmp_path / "run"), callbacks=[SamplerSpy()])
    assert SamplerSpy.samplers and all(isinstance(s, EpochSeededLengthGroupedSampler) for s in SamplerSpy.samplers)
    assert results["history"]


class SamplerSpy:
    """A Trainer callback that keeps the training sampler Trainer built (a plain TrainerCallback subclass)."""

    samplers: list = []

    def __new__(cls):
        from transformers import TrainerCallback

        class Spy(TrainerCallback):
            def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
                if train_dataloader is not None:
                    SamplerSpy.samplers.append(train_dataloader.batch_sampler.sampler)

        return Spy()


def test_scratch_gradient_checkpointing_takes_what_trainer_passes(tmp_path):
    """Trainer 5.25 calls ``gradient_checkpointing_enable(gradient_checkpointing_kwargs, every_n_layers=...,
    offload=...)``; a scratch model hands whatever it is given to its base."""
    results = run_experiment(preset="tiny", method="lora", max_steps=2, gradient_checkpointing=True,
                             output_dir=str(tmp_path / "run"))
    assert results["config"]["training"]["gradient_checkpointing"] is True
    assert results["history"]


# -------------------------------------------------------------------------------- outside the tested window
@pytest.fixture
def transformers_5_26(monkeypatch):
    """transformers reports 5.26.0 (only the reported number changes; the code is the installed one)."""
    real = compat.installed_version
    monkeypatch.setattr(compat, "installed_version",
                        lambda name: "5.26.0" if name == "transformers" else real(name))
    compat.warn_outside_tested_versions.cache_clear()
    yield
    compat.warn_outside_tested_versions.cache_clear()


WARNING = ("warning: hf-peft-suite is not tested with transformers 5.26.0 (tested: 4.57.6 to 5.25.x); results may "
           "differ or a step may fail. For a tested set: pip install 'transformers>=4.57.6,<5.26'")


def test_a_newer_transformers_is_one_warning_line_at_the_start_of_every_command(transformers_5_26, tmp_path, capsys):
    run_dir = tmp_path / "run"
    commands = {
        "run": ["--preset", "tiny", "--max_steps", "1", "--output_dir", str(run_dir)],
        "evaluate": ["evaluate", str(run_dir), "--output_dir", str(tmp_path / "evaluation")],
        "predict": ["predict", str(run_dir), "a wonderful film"],
        "report": ["report", str(run_dir)],
        "push": ["push", str(run_dir), "--hub_model_id", "you/run", "--hub_token", ""],
    }
    for command, argv in commands.items():
        compat.warn_outside_tested_versions.cache_clear()
        code = main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[:1] == [WARNING], command
        assert sum(line.startswith("warning: hf-peft-suite is not tested") for line in lines) == 1, command
        assert code == (2 if command == "push" else 0), (command, lines)  # push: no Hub here, one error line after
    results = json.loads((run_dir / "results.json").read_text())
    assert results["history"]
