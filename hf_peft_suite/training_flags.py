"""Training flags whose needs are checked before anything is written: optional packages and the metric that picks
the best model.

Trainer finds a missing package only when it builds the tracker callbacks, the optimizer or the kernels, after a run
has claimed its folder (and written the random base): a traceback, and a folder that blocks the corrected rerun. Here
each of those flags asks Trainer's own code the same question before anything is written, and a problem is one
:class:`~hf_peft_suite.errors.UsageError` that names the flag, the package and the ``pip install`` line:

- ``--report_to NAME`` (every integration Trainer knows): its callback is built, which is how Trainer finds out;
- ``--optim NAME`` (every optimizer Trainer knows): ``Trainer.get_optimizer_cls_and_kwargs``, which imports the
  optimizer's package (bitsandbytes, torchao, GaLore, APOLLO, LOMO, schedulefree, ...) and checks its options;
- ``--use_liger_kernel``: the ``liger-kernel`` package;
- ``--torch_compile_backend NAME``: one accelerate knows, with its package (torch-tensorrt, onnxruntime, TVM,
  torch_xla, intel-extension-for-pytorch); Trainer would fail as it compiles the model;
- ``--debug tpu_metrics_debug``: torch_xla (Trainer would fail at the end of training, its results unsaved).

Two more are checked as the arguments are read, where Trainer's own check (in ``TrainingArguments``) would give a
message without the package or one about something else (:func:`check_argument_packages`): ``--ddp_backend`` ccl,
hccl, cncl and mccl need their vendor's PyTorch plug-in; ``--half_precision_backend apex`` (transformers 4.57) is
NVIDIA apex's fp16, which T5 cannot train in.

``--metric_for_best_model`` must name a metric evaluation computes (``accuracy``, ``macro_f1``, ``invalid_rate``,
``loss``, or one a user's ``compute_metrics`` returns); Trainer would find out at the first evaluation, after a whole
epoch of training.
"""

from __future__ import annotations

import re
import sys

from .errors import UsageError

# Install lines: of packages whose missing-package message (in some transformers release) names no pip command, and
# of the packages the flags below need.
INSTALL_COMMANDS = {
    "tensorboard": "pip install tensorboard",
    "bitsandbytes": "pip install bitsandbytes",
    "torchdistx": "pip install git+https://github.com/pytorch/torchdistx",
    "apex": "pip install git+https://github.com/NVIDIA/apex (built for your CUDA)",
    "torch_xla": "pip install torch_xla (on a TPU machine)",
    "torch_npu": "pip install torch_npu (on an Ascend NPU machine)",
    "oneccl_bindings_for_pytorch": "pip install oneccl_bind_pt (Intel oneCCL)",
    "torch_mlu": "the Cambricon torch_mlu package (on an MLU machine)",
    "torch_musa": "the Moore Threads torch_musa package (on a MUSA machine)",
    "torch_tensorrt": "pip install torch-tensorrt",
    "onnxruntime": "pip install onnxruntime",
    "tvm": "pip install apache-tvm",
    "intel_extension_for_pytorch": "pip install intel-extension-for-pytorch",
}
# The metrics every evaluation computes (GenerationAccuracyTrainer.OWN_METRICS), as --metric_for_best_model names them.
EVALUATION_METRICS = ("accuracy", "macro_f1", "invalid_rate", "loss", "num_scored")
# --ddp_backend values whose process group comes from a vendor's PyTorch plug-in, and its module.
DDP_BACKEND_PACKAGES = {"ccl": "oneccl_bindings_for_pytorch", "hccl": "torch_npu", "cncl": "torch_mlu",
                        "mccl": "torch_musa"}
# --torch_compile_backend values that need a package of their own, and its module.
COMPILE_BACKEND_PACKAGES = {"tensorrt": "torch_tensorrt", "fx2trt": "torch_tensorrt", "onnxrt": "onnxruntime",
                            "tvm": "tvm", "ipex": "intel_extension_for_pytorch", "aot_torchxla_trace_once": "torch_xla",
                            "torchxla_trace_once": "torch_xla"}


def check_training_flags(training, model, user_metrics: bool = False) -> None:
    """Refuse, before anything is written, a training flag this machine or this run cannot honour (see the module
    docstring). ``model`` is the model to train (some optimizers need it); ``user_metrics``: a ``compute_metrics``
    adds metrics whose names are known only once it has run."""
    check_report_to(training.report_to)
    check_optimizer(training, model)
    check_kernels(training)
    check_compile_backend(training)
    check_tpu_debug(training)
    check_best_model_metric(training, user_metrics)


def check_argument_packages(training) -> None:
    """Called by ``TrainingArguments.__post_init__`` before Trainer's own checks (see the module docstring)."""
    if getattr(training, "half_precision_backend", None) == "apex":  # transformers 4.57 (5.x has no apex)
        raise UsageError("--half_precision_backend apex is NVIDIA apex's float16 training, and T5 overflows in "
                         "float16; leave it out (--bf16 runs under torch's own autocast)")
    backend = (getattr(training, "ddp_backend", None) or "").lower()
    module = DDP_BACKEND_PACKAGES.get(backend)
    if module and not _installed(module):
        raise UsageError(f"--ddp_backend {backend} needs the {module} package, which is not installed: "
                         f"{INSTALL_COMMANDS[module]}; or leave --ddp_backend out (gloo on CPUs, nccl on NVIDIA GPUs)")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_report_to(report_to) -> None:
    """Every ``--report_to`` integration must be one Trainer knows, with its package installed."""
    from transformers.integrations import get_reporting_integration_callbacks

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [name for name in names if name not in ("none", "all")]  # "all": whatever is installed
    try:
        callbacks = get_reporting_integration_callbacks(names)
    except ValueError as error:
        raise UsageError(f"--report_to {' '.join(names)}: {with_install_command(error)}") from None
    for name, callback in zip(names, callbacks):
        problem = _unbuildable(callback)
        if problem:
            raise UsageError(f"--report_to {name} cannot be used here: {problem}")


def _unbuildable(callback: type) -> str | None:
    """Why Trainer could not build ``callback`` here (a missing package), or ``None``: it is built and dropped, which
    is how Trainer finds out. A callback that refuses to be built leaves a half-made object whose ``__del__`` fails
    (MLflow's, Neptune's); Python would print that on stderr, so it is silenced while the object goes."""
    hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
    try:
        try:
            callback()
        except (ImportError, RuntimeError, ValueError) as error:
            return with_install_command(error)
        return None
    finally:  # by now the half-made object is gone (the exception that held it was cleared with the except block)
        sys.unraisablehook = hook


def check_optimizer(training, model) -> None:
    """``--optim`` must be one Trainer can build here: its package installed, its options complete."""
    from transformers import Trainer

    # The layer-wise GaLore/APOLLO optimizers register hooks on the model they are given: they get none here, and only
    # a missing package (an ImportError, raised before the model is needed) is refused for them.
    name = getattr(training.optim, "value", training.optim)  # an OptimizerNames enum on transformers 4.57
    layerwise = name.endswith("layerwise")
    try:
        Trainer.get_optimizer_cls_and_kwargs(training, None if layerwise else model)
    except (ImportError, ValueError, RuntimeError, TypeError) as error:
        if layerwise and not isinstance(error, ImportError):
            return
        raise UsageError(f"--optim {name} cannot be used here: {with_install_command(error)}") from None


def with_install_command(error: BaseException) -> str:
    """Trainer's message on one line, with the ``pip install`` line for the package it names where it has none."""
    message = " ".join(str(error).split())
    if "pip install" not in message:
        named = [command for package, command in INSTALL_COMMANDS.items()
                 if re.search(rf"\b{re.escape(package)}\b", message)]
        message += f"; install it with: {named[0]}" if named else ""
    return message


def check_kernels(training) -> None:
    """``--use_liger_kernel`` needs the ``liger-kernel`` package (Trainer would find out as it is built)."""
    from transformers.utils import is_liger_kernel_available

    if getattr(training, "use_liger_kernel", False) and not is_liger_kernel_available():
        raise UsageError("--use_liger_kernel needs the liger-kernel package (0.3 or later), which is not installed: "
                         "pip install liger-kernel; or leave --use_liger_kernel out")


def check_compile_backend(training) -> None:
    """``--torch_compile_backend`` must be one accelerate knows, with its package installed."""
    if not training.torch_compile or training.torch_compile_backend is None:
        return
    from accelerate.utils import DynamoBackend

    backend = training.torch_compile_backend.lower()
    known = [member.value.lower() for member in DynamoBackend if member.value != "NO"]
    if backend not in known:
        raise UsageError(f"--torch_compile_backend {training.torch_compile_backend} is not a backend accelerate knows; "
                         f"choose one of {', '.join(known)} (inductor is torch's default)")
    module = COMPILE_BACKEND_PACKAGES.get(backend)
    if module and not _installed(module):
        raise UsageError(f"--torch_compile_backend {backend} needs the {module} package, which is not installed: "
                         f"{INSTALL_COMMANDS[module]}; or leave --torch_compile_backend out (inductor)")


def check_tpu_debug(training) -> None:
    """``--debug tpu_metrics_debug`` prints torch_xla's metrics: it needs torch_xla."""
    if any(getattr(option, "value", option) == "tpu_metrics_debug" for option in training.debug or []) \
            and not _installed("torch_xla"):
        raise UsageError(f"--debug tpu_metrics_debug prints TPU metrics and needs torch_xla, which is not installed: "
                         f"{INSTALL_COMMANDS['torch_xla']}; leave it out")


def check_best_model_metric(training, user_metrics: bool) -> None:
    """``--metric_for_best_model`` must name a metric evaluation computes (see the module docstring)."""
    metric = training.metric_for_best_model
    if metric is None or user_metrics or metric.removeprefix("eval_") in EVALUATION_METRICS:
        return
    raise UsageError(
        f"--metric_for_best_model {metric} is not a metric evaluation computes; choose one of "
        f"{', '.join(EVALUATION_METRICS)} (run_experiment(compute_metrics=...) adds your own)"
    )
