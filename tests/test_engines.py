"""Launch semantics and the sharding engines (FSDP, DeepSpeed ZeRO-3), tested without a GPU.

What is real and what is simulated (no GPU is here, and DeepSpeed, which needs CUDA, is not installed):

- FSDP: torch's own FSDP1 (``FullyShardedDataParallel``) and FSDP2 (``fully_shard``) wrap the tiny models on a
  one-process gloo group on the CPU, with T5 blocks wrapped as ``configs/accelerate/fsdp*_t5.yaml`` asks; the full state
  dict is gathered as accelerate's ``get_state_dict`` gathers it and handed to the cell's artifact format as
  ``GenerationAccuracyTrainer._save`` hands it. Only Trainer and accelerate's FSDP plugin are left out: accelerate
  drops FSDP on CPUs.
- ZeRO-3: :class:`SimulatedZero3` does to the base's parameters what ``deepspeed.zero.Init`` does (empty data,
  ``ds_numel``, ``ds_shape``, ``ds_id``) and stands in for the two DeepSpeed calls the package makes
  (``deepspeed.zero.GatheredParameters``, ``deepspeed.zero.register_external_parameter``).
- Several GPUs: ``TrainingArguments.n_gpu`` is made to report 4, as it does on a machine with 4 visible GPUs.
- The launcher's environment: the variables ``accelerate launch`` sets are set; DeepSpeed's training arguments cannot
  be built without DeepSpeed, so its engine is read from a stand-in holding the config accelerate would build.
- Device placement: ``meta`` stands in for ``cuda``: a delta must follow its base to whatever device it is on.

Nothing here starts a process: the whole file takes about 17 s of CPU here, imports included.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from packaging.version import Version
from transformers import AutoModelForSeq2SeqLM

import hf_peft_suite  # noqa: F401  (registers the scratch models with the Auto classes)
from hf_peft_suite import compat
from hf_peft_suite.arguments import TrainingArguments, parse_arguments, recipe_train_batch
from hf_peft_suite.errors import UsageError
from hf_peft_suite.launch import (
    FSDP2_LOWEST_ACCELERATE,
    Engine,
    check_engine,
    engine_of,
    global_train_batch,
    warn_if_batch_differs,
)
from hf_peft_suite.methods import build_method_model
from hf_peft_suite.methods.formats import PEFT_ADAPTER, SCRATCH_DELTA
from hf_peft_suite.methods.lora import LoRALinear, LoRAOptions
from hf_peft_suite.methods.prompt_tuning import PromptTuningOptions
from hf_peft_suite.modeling import build_model, count_parameters
from hf_peft_suite.tiny import TINY_MODEL_NAME

from .conftest import REPO_ROOT
from .helpers import (
    SCRATCH_DELTAS,
    assert_refused,
    labelled_batch,
    loads_inside_main_process_first,
    scratch_delta_model,
    snapshot,
)

# ------------------------------------------------------------------------------------------------------ FSDP
@pytest.fixture
def gloo_group(tmp_path):
    """A one-process gloo group on the CPU, torn down after the test (so no other test sees it)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def wrap_blocks(model, fsdp_version: int):
    """Shard ``model`` as accelerate's FSDP plugin does with ``fsdp_transformer_layer_cls_to_wrap: T5Block``."""
    from transformers.models.t5.modeling_t5 import T5Block

    if fsdp_version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        return FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy({T5Block}), use_orig_params=True,
                                        device_id=torch.device("cpu"))
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if isinstance(module, T5Block):
            fully_shard(module)
    return fully_shard(model)


def gathered_full_state_dict(wrapped, fsdp_version: int) -> dict:
    """The state dict accelerate's ``get_state_dict`` gathers for Trainer under FSDP with ``FULL_STATE_DICT``."""
    if fsdp_version == 1:
        from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

        config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FullyShardedDataParallel.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, config):
            return wrapped.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def train_one_step(wrapped, batch) -> None:
    """One step of plain SGD (learning rate 0.5) on the sharded (DTensor) parameters of an FSDP2 model, left in eval
    mode."""
    wrapped.train()
    wrapped(**batch).loss.backward()
    with torch.no_grad():
        for parameter in wrapped.parameters():
            if parameter.grad is not None:
                parameter.sub_(0.5 * parameter.grad)
    wrapped.eval()


@pytest.mark.parametrize("fsdp_version", [1, 2], ids=["fsdp1", "fsdp2"])
@pytest.mark.parametrize("name", list(SCRATCH_DELTAS))
def test_a_scratch_delta_under_fsdp_is_saved_by_name_and_loads_back(name, fsdp_version, gloo_group, tiny_base_dir,
                                                                      tiny_tokenizer, tmp_path):
    """Trainer saves ``accelerator.unwrap_model(model)`` from the gathered state dict. Under FSDP1 the unwrapped
    model's module paths still carry ``_fsdp_wrapped_module`` (only the root wrapper is removed) while the state dict
    does not: the delta is resolved by its unwrapped names (it used to raise KeyError after the whole run). Under
    FSDP2, which PEFT cells use, the model also takes a training step first, and the saved delta is the trained one."""
    from accelerate.utils import extract_model_from_parallel

    model = scratch_delta_model(name, AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), tiny_tokenizer)
    names = model.delta_parameter_names()
    batch = labelled_batch(tiny_tokenizer)
    wrapped = wrap_blocks(model, fsdp_version)
    if fsdp_version == 2:
        train_one_step(wrapped, batch)
    with torch.no_grad():
        expected = wrapped(**batch).logits

    unwrapped = extract_model_from_parallel(wrapped)  # what Trainer's accelerator.unwrap_model returns
    wrapped_names = [n for n, _ in unwrapped.named_parameters() if "_fsdp_wrapped_module" in n]
    assert bool(wrapped_names) == (fsdp_version == 1)  # FSDP2 renames nothing
    assert unwrapped.delta_parameter_names() == names
    SCRATCH_DELTA.save(unwrapped, str(tmp_path / "artifact"), gathered_full_state_dict(wrapped, fsdp_version))

    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "artifact").eval()
    assert loaded.delta_parameter_names() == names
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, expected, atol=1e-6)


def test_a_peft_lora_under_fsdp2_is_saved_from_the_gathered_state_dict(gloo_group, tiny_base_dir, tiny_tokenizer,
                                                                          tmp_path):
    """The library cell's way under FSDP2: one training step, then peft writes the adapter from the state dict FSDP
    gathers (not from the sharded parameters), and peft loads it back onto a fresh base."""
    from peft import PeftModel

    model = build_method_model(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), "lora", "library", None,
                               tiny_tokenizer)
    batch = labelled_batch(tiny_tokenizer)
    wrapped = wrap_blocks(model, 2)
    train_one_step(wrapped, batch)
    with torch.no_grad():
        expected = wrapped(**batch).logits
    PEFT_ADAPTER.save(wrapped, str(tmp_path / "adapter"), gathered_full_state_dict(wrapped, 2))

    loaded = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(**batch).logits, expected, atol=1e-6)


def test_fsdp1_loses_a_frozen_root_after_a_backward_pass_so_peft_cells_are_refused_under_it(gloo_group, tiny_model,
                                                                                             tiny_tokenizer):
    """Why PEFT cells are refused under FSDP1 (configs/accelerate/fsdp1_t5.yaml is for full fine-tuning): the root
    unit holds the shared embedding and the final norms, all frozen, and FSDP1 (torch 2.13, use_orig_params) cannot
    run or save the model after one training step. Should a torch release fix it, this test fails: lift the refusal
    (hf_peft_suite/launch.py) then."""
    model = build_method_model(tiny_model, "lora", "scratch", None, tiny_tokenizer)
    wrapped = wrap_blocks(model, 1)
    batch = labelled_batch(tiny_tokenizer)
    wrapped(**batch).loss.backward()
    with pytest.raises((AssertionError, RuntimeError)):
        with torch.no_grad():
            wrapped(**batch)
        gathered_full_state_dict(wrapped, 1)


# ------------------------------------------------------------------------------------------------- ZeRO-3
class SimulatedZero3:
    """What ``deepspeed.zero.Init`` does to the parameters created inside it, and the two DeepSpeed calls the package
    makes, for tests without DeepSpeed: each parameter's data is emptied (``numel() == 0``) and its size and shape
    kept in ``ds_numel`` / ``ds_shape``; ``GatheredParameters`` gives the listed parameters their full data for the
    length of the block (as DeepSpeed's all-gather does) and empties them again; ``register_external_parameter``
    is recorded."""

    def __init__(self):
        self.full: dict[torch.nn.Parameter, torch.Tensor] = {}
        self.external: list[tuple[torch.nn.Module, torch.nn.Parameter]] = []

    def partition(self, module: torch.nn.Module) -> torch.nn.Module:
        for parameter in module.parameters():
            self.full[parameter] = parameter.data
            parameter.ds_id, parameter.ds_numel, parameter.ds_shape = len(self.full), parameter.numel(), parameter.shape
            parameter.data = torch.empty(0, dtype=parameter.dtype)
        return module

    @contextlib.contextmanager
    def GatheredParameters(self, params, modifier_rank=None, fwd_module=None, enabled=True):  # noqa: N802 (DeepSpeed's)
        params = list(params)
        for parameter in params:
            parameter.data = self.full[parameter]
        try:
            yield
        finally:
            for parameter in params:
                parameter.data = torch.empty(0, dtype=parameter.dtype)

    def register_external_parameter(self, module, parameter):
        self.external.append((module, parameter))

    def module(self) -> types.ModuleType:
        deepspeed = types.ModuleType("deepspeed")
        deepspeed.zero = SimpleNamespace(GatheredParameters=self.GatheredParameters,
                                         register_external_parameter=self.register_external_parameter)
        return deepspeed


@pytest.fixture
def zero3(monkeypatch) -> SimulatedZero3:
    simulation = SimulatedZero3()
    monkeypatch.setitem(sys.modules, "deepspeed", simulation.module())
    return simulation


def tiny_cell(method, options, tokenizer, base=None, implementation="scratch"):
    """``build_model`` on the tiny base (seed 0), as a run builds it: the same random draws whatever the base holds."""
    from hf_peft_suite.tiny import build_tiny_model

    model, _ = build_model(TINY_MODEL_NAME, method, implementation, options, tokenizer=tokenizer,
                           base_model=base if base is not None else build_tiny_model(seed=0), seed=0)
    return model


@pytest.mark.parametrize("method, implementation", [("full", "scratch"), ("lora", "scratch"), ("lora", "library"),
                                                    ("prompt_tuning", "scratch"), ("adapter", "scratch")])
def test_parameters_partitioned_by_zero3_are_counted_whole(method, implementation, zero3, tiny_tokenizer):
    from hf_peft_suite.tiny import build_tiny_model

    whole = count_parameters(tiny_cell(method, None, tiny_tokenizer, implementation=implementation))
    base = zero3.partition(build_tiny_model(seed=0))
    assert sum(parameter.numel() for parameter in base.parameters()) == 0  # what ZeRO-3 leaves each process
    assert count_parameters(tiny_cell(method, None, tiny_tokenizer, base, implementation)) == whole
    assert 0 < whole["trainable_percent"] <= 100 and (whole["trainable_percent"] == 100) == (method == "full")


def test_a_zero3_partitioned_base_gives_the_prompt_and_magnitude_of_the_whole_base(zero3, tiny_tokenizer):
    """The prompt's vocabulary and text inits and DoRA's magnitude read the base's weights when the cell is built:
    under ZeRO-3 they are gathered first (without it, the vocabulary init indexes an empty matrix)."""
    from hf_peft_suite.tiny import build_tiny_model

    for options in (PromptTuningOptions(prompt_init="vocab"),
                    PromptTuningOptions(prompt_init="text", prompt_init_text="positive or negative")):
        expected = tiny_cell("prompt_tuning", options, tiny_tokenizer).soft_prompt.prompt_embeddings
        partitioned = zero3.partition(build_tiny_model(seed=0))
        model = tiny_cell("prompt_tuning", options, tiny_tokenizer, partitioned)
        assert torch.equal(model.soft_prompt.prompt_embeddings, expected)
        assert partitioned.get_input_embeddings().weight.numel() == 0  # released again after the init

    dora = LoRAOptions(lora_use_dora=True)
    expected = {name: layer.lora_magnitude_vector.weight for name, layer in tiny_cell("lora", dora, tiny_tokenizer)
                .lora_layers()}
    model = tiny_cell("lora", dora, tiny_tokenizer, zero3.partition(build_tiny_model(seed=0)))
    layers = dict(model.lora_layers())
    assert expected and all(torch.equal(layers[name].lora_magnitude_vector.weight, magnitude)
                            for name, magnitude in expected.items())
    # Each DoRA layer's forward reads W0 after the base layer has run: DeepSpeed keeps it gathered for the whole layer.
    assert [(id(module), id(parameter)) for module, parameter in zero3.external] == \
        [(id(layer), id(layer.base_layer.weight)) for layer in layers.values()]
    assert all(isinstance(module, LoRALinear) for module, _ in zero3.external)


def test_a_checkpoint_is_checked_against_full_shapes_under_zero3(zero3, tiny_tokenizer, tmp_path):
    """A checkpoint's tensors are checked against the model's before they are loaded; once DeepSpeed has taken the
    model, every parameter is partitioned, the delta's too (here: the whole model), so the check compares full shapes:
    a fitting checkpoint passes and a foreign one fails."""
    from hf_peft_suite.tiny import build_tiny_model

    tiny_cell("lora", None, tiny_tokenizer).save_pretrained(tmp_path / "scratch")
    SCRATCH_DELTA.check(zero3.partition(tiny_cell("lora", None, tiny_tokenizer)), str(tmp_path / "scratch"))
    other = zero3.partition(tiny_cell("lora", LoRAOptions(lora_r=4), tiny_tokenizer))
    with pytest.raises(UsageError, match="other options"):
        SCRATCH_DELTA.check(other, str(tmp_path / "scratch"))

    build_method_model(build_tiny_model(seed=0), "lora", "library", None, tiny_tokenizer).save_pretrained(
        tmp_path / "peft")
    library = build_method_model(build_tiny_model(seed=0), "lora", "library", None, tiny_tokenizer)
    PEFT_ADAPTER.check(zero3.partition(library), str(tmp_path / "peft"))


# ----------------------------------------------------------------------------------------- device placement
@pytest.mark.parametrize("name", list(SCRATCH_DELTAS))
def test_every_scratch_delta_follows_its_base_to_the_meta_device_and_back(name, tiny_base_dir, tiny_tokenizer,
                                                                         tmp_path):
    """``from_pretrained(path, device_map="cuda")`` puts the base on the GPU and the delta is built beside it; here
    ``meta`` stands in for ``cuda``. A delta left on the CPU (the soft prompt and the adapters were) fails the forward
    with a device mismatch."""
    model = scratch_delta_model(name, AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir), tiny_tokenizer)
    model.save_pretrained(tmp_path / "artifact")
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_base_dir).to("meta")
    on_meta = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "artifact", base_model=base)
    assert {tensor.device.type for tensor in [*on_meta.parameters(), *on_meta.buffers()]} == {"meta"}
    # (no attention mask: transformers 5 reads a mask's values to choose an attention kernel, which meta has none of)
    batch = {key: value.to("meta") for key, value in labelled_batch(tiny_tokenizer).items() if key != "attention_mask"}
    assert on_meta(**batch).logits.device.type == "meta"

    back = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "artifact", device_map="cpu")
    batch = labelled_batch(tiny_tokenizer)
    with torch.no_grad():
        assert torch.equal(back(**batch).logits, model(**batch).logits)


# -------------------------------------------------------------------------------------------------- launches
def test_several_gpus_in_one_process_are_refused_before_anything_is_written(monkeypatch, capsys, tmp_path):
    """``python run_experiment.py`` on a machine with 4 GPUs: Trainer would use nn.DataParallel (TrainingArguments
    reports n_gpu 4 there; here it is made to)."""
    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 4))
    output_dir = tmp_path / "run"
    assert_refused(["--preset", "tiny", "--use_cpu", "false", "--output_dir", output_dir],
                   r"this process sees 4 GPUs, and Trainer would split every batch over them with nn\.DataParallel.*"
                   r"accelerate launch --multi_gpu --num_processes 4 run_experiment\.py.*torchrun --nproc_per_node 4.*"
                   r"CUDA_VISIBLE_DEVICES=0", capsys, tmp_path, absent=output_dir)


def test_a_comparison_on_several_gpus_in_one_process_is_refused_once(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 4))
    output_dir = tmp_path / "compare"
    assert_refused(["--preset", "tiny", "--method", "all", "--use_cpu", "false", "--output_dir", output_dir],
                   r"this process sees 4 GPUs", capsys, tmp_path, absent=output_dir)


def test_the_global_batch_is_recorded_and_a_batch_other_than_the_presets_is_said_once(capsys, tmp_path):
    args = parse_arguments(["--preset", "tiny", "--per_device_train_batch_size", "8",
                            "--gradient_accumulation_steps", "2", "--output_dir", str(tmp_path / "run")])
    training = args.training
    assert global_train_batch(training) == 16 and engine_of(training).name == "single"
    assert recipe_train_batch(args) == (32, "the tiny preset")
    warn_if_batch_differs(training, *recipe_train_batch(args))
    warn_if_batch_differs(training, *recipe_train_batch(args))
    assert capsys.readouterr().err.splitlines() == [
        "warning: the global batch is 16 (8 per device x 1 process x 2 accumulation steps), not the 32 that the tiny "
        "preset's learning rate and schedule were chosen for; for the tiny preset's batch pass "
        "--per_device_train_batch_size 16"]
    warn_if_batch_differs(training, 16, "the tiny preset")
    assert capsys.readouterr().err == ""

    # The seed recipe (no preset) with its 32 per device on 8 GPUs, one process each (the line docs/distributed.md
    # quotes); the training arguments of 8 processes stand in (no GPU here).
    seed = parse_arguments(["--output_dir", str(tmp_path / "seed")])
    assert recipe_train_batch(seed) == (32, "the seed recipe") and global_train_batch(seed.training) == 32
    eight_gpus = SimpleNamespace(train_batch_size=32, per_device_train_batch_size=32, world_size=8,
                                 gradient_accumulation_steps=1)
    warn_if_batch_differs(eight_gpus, *recipe_train_batch(seed))
    assert capsys.readouterr().err.splitlines() == [
        "warning: the global batch is 256 (32 per device x 8 processes x 1 accumulation step), not the 32 that the "
        "seed recipe's learning rate and schedule were chosen for; for the seed recipe's batch pass "
        "--per_device_train_batch_size 4"]


def test_the_data_is_loaded_inside_main_process_first(monkeypatch, tmp_path):
    """Under several processes the others wait while process 0 downloads and tokenizes, then read datasets' cache
    (TrainingArguments.main_process_first, whose barriers need several processes; here loading is seen inside it).
    The ``evaluate`` command does the same (tests/test_runs.py)."""
    from hf_peft_suite import experiment

    seen = loads_inside_main_process_first(monkeypatch, experiment, "load_data")
    experiment.build(experiment.prepare(parse_arguments(["--preset", "tiny", "--output_dir", str(tmp_path / "run")])))
    assert seen == [True]


@pytest.fixture
def launcher_environment(monkeypatch):
    """Set variables as ``accelerate launch`` would have before the package was imported."""
    def set_variables(**variables):
        for key, value in variables.items():
            monkeypatch.setenv(key, value)
            monkeypatch.setitem(compat._LAUNCHER_ENVIRONMENT, key, value)  # what restore_launcher_environment keeps
    return set_variables


def test_the_engine_is_read_from_the_launcher_environment(launcher_environment, tmp_path):
    def engine(**variables):
        launcher_environment(**variables)
        return engine_of(parse_arguments(["--preset", "tiny", "--output_dir", str(tmp_path / "run")]).training)

    # DeepSpeed's training arguments need DeepSpeed installed: a stand-in holding the config accelerate builds.
    stand_in = SimpleNamespace(fsdp=None, fsdp_plugin_args=None, deepspeed=None, world_size=8, deepspeed_plugin=
                               SimpleNamespace(deepspeed_config={"zero_optimization": {
                                   "stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}))
    zero3 = engine_of(stand_in)
    assert zero3 == Engine("deepspeed", zero_stage=3, gathers_16bit_weights=True)
    assert zero3.name == "deepspeed-zero3" and zero3.shards_parameters
    assert engine().name == "single"
    assert engine(ACCELERATE_USE_FSDP="true") == Engine("fsdp", 1, "FULL_STATE_DICT")  # accelerate < 1.6: no version
    assert engine(FSDP_VERSION="2") == Engine("fsdp", 2, "SHARDED_STATE_DICT")  # accelerate's FSDP2 default
    assert engine(FSDP_STATE_DICT_TYPE="FULL_STATE_DICT").name == "fsdp2"


def test_processes_launched_together_stop_when_accelerate_renamed_its_engine_variables(monkeypatch):
    """accelerate is not capped: a release that renamed the variables engine_of reads would make an FSDP or ZeRO-3 run
    look like DDP and skip its refusals, so processes launched together check them first; one process reads none."""
    import accelerate.utils.launch

    def prepare_multi_gpu_env(args):  # as a release that renamed the FSDP variables would have it
        return {"ACCELERATE_FSDP_ENABLED": "true", "ACCELERATE_FSDP_STATE_DICT": "FULL_STATE_DICT"}

    monkeypatch.setattr(accelerate.utils.launch, "prepare_multi_gpu_env", prepare_multi_gpu_env)
    cell = "--method lora --implementation scratch"
    with pytest.raises(UsageError) as refused:
        check_engine(Engine("ddp"), SimpleNamespace(), cell, True, delta=True)
    message = str(refused.value)
    assert message.startswith("accelerate ") and "is not compatible with hf-peft-suite" in message
    assert "prepare_multi_gpu_env no longer uses \"ACCELERATE_USE_FSDP\"" in message and "\n" not in message
    check_engine(Engine("single"), SimpleNamespace(), cell, True, delta=True)


@pytest.mark.parametrize("config", ["fsdp_t5.yaml", "fsdp1_t5.yaml"])
def test_each_shipped_fsdp_config_gives_the_engine_it_says(config, launcher_environment, capsys, tmp_path):
    """accelerate's own launcher turns the config into the variables it passes its processes (nothing is started);
    read back, they are the engine the config's comments promise. accelerate 1.3 to 1.5 ignore fsdp_version: the FSDP2
    config runs FSDP1 there, and a PEFT cell is refused with the way out."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(REPO_ROOT / "configs" / "accelerate" / config),
                                               "run_experiment.py"])
    validated = _validate_launch_command(args)  # accelerate fills args from the config file (private; tests only)
    environment = prepare_multi_gpu_env(validated[0] if isinstance(validated, tuple) else args)
    launcher_environment(**{key: value for key, value in environment.items()
                            if key.startswith(("ACCELERATE_", "FSDP_"))})
    run = ["--preset", "tiny", "--method", "lora", "--output_dir", tmp_path / "run"]
    engine = engine_of(parse_arguments([str(item) for item in run]).training)
    has_fsdp2 = Version(compat.installed_version("accelerate")) >= Version(FSDP2_LOWEST_ACCELERATE)
    version = 2 if config == "fsdp_t5.yaml" and has_fsdp2 else 1
    assert engine == Engine("fsdp", version, "FULL_STATE_DICT")
    assert_refused(run, "FSDP needs GPUs" if version == 2 else "PEFT cells do not run under FSDP1", capsys, tmp_path)


def test_what_would_save_no_weights_or_fail_under_fsdp_or_zero3_is_refused(launcher_environment, capsys, tmp_path):
    """Refused before anything is loaded or written, one line each."""
    run = ["--preset", "tiny", "--max_steps", "1", "--output_dir", tmp_path / "run"]
    launcher_environment(ACCELERATE_USE_FSDP="true", FSDP_STATE_DICT_TYPE="SHARDED_STATE_DICT")
    assert_refused(run, r"FSDP with fsdp_state_dict_type SHARDED_STATE_DICT makes Trainer write FSDP's own checkpoint "
                        r"and no model/ weights; set fsdp_state_dict_type: FULL_STATE_DICT", capsys, tmp_path)
    launcher_environment(FSDP_STATE_DICT_TYPE="FULL_STATE_DICT")
    assert_refused([*run, "--method", "lora"], r"PEFT cells do not run under FSDP1.*use FSDP2", capsys, tmp_path)
    assert_refused(run, r"FSDP needs GPUs", capsys, tmp_path)  # full fine-tuning under FSDP1: only the GPU is missing
    if compat.installed_version("adapters"):  # the AdapterHub cell, where it is installed (transformers 4.57)
        assert_refused([*run, "--method", "adapter", "--implementation", "library"],
                       r"--method adapter --implementation library cannot run under FSDP: AdapterHub's save_adapter",
                       capsys, tmp_path)
    launcher_environment(FSDP_VERSION="2")
    if Version(compat.installed_version("accelerate")) >= Version(FSDP2_LOWEST_ACCELERATE):
        assert_refused([*run, "--method", "lora"], r"FSDP needs GPUs", capsys, tmp_path)
    else:  # the lowest supported accelerate, 1.3
        assert_refused([*run, "--method", "lora"], r"FSDP2 \(fsdp_version: 2\) needs accelerate >= 1\.15\.0 here",
                       capsys, tmp_path)

    adapterhub = SimpleNamespace(resume_from_checkpoint=None, load_best_model_at_end=False)
    cell = "--method adapter --implementation library"
    for engine in (Engine("fsdp", 2, "FULL_STATE_DICT"), Engine("deepspeed", zero_stage=3, gathers_16bit_weights=True)):
        with pytest.raises(UsageError, match=r"cannot run under .*AdapterHub's save_adapter reads the model's own"):
            check_engine(engine, adapterhub, cell, saves_from_given_state_dict=False, delta=True)
    with pytest.raises(UsageError, match="needs GPUs"):  # ZeRO-2 keeps parameters whole: AdapterHub saves as usual
        check_engine(Engine("deepspeed", zero_stage=2), adapterhub, cell, saves_from_given_state_dict=False, delta=True)
    # Trainer would look for FSDP's own checkpoint files, which hf_peft_suite's checkpoints are not.
    full_fsdp1 = functools.partial(check_engine, Engine("fsdp", 1, "FULL_STATE_DICT"),
                                   cell="--method full --implementation scratch", saves_from_given_state_dict=True,
                                   delta=False)
    with pytest.raises(UsageError, match="--resume_from_checkpoint under FSDP is not supported"):
        full_fsdp1(SimpleNamespace(resume_from_checkpoint="run/checkpoint-8", load_best_model_at_end=False))
    with pytest.raises(UsageError, match="--load_best_model_at_end under FSDP is not supported"):
        full_fsdp1(SimpleNamespace(resume_from_checkpoint=None, load_best_model_at_end=True))
    with pytest.raises(UsageError, match="DeepSpeed ZeRO-3 without zero3_save_16bit_model"):
        check_engine(Engine("deepspeed", zero_stage=3, gathers_16bit_weights=False), adapterhub, "--method lora",
                     saves_from_given_state_dict=True, delta=True)
    assert snapshot(tmp_path / "run") == {}
