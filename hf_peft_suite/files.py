"""The names of the files and folders this project writes and reads, each defined once.

transformers' own names are imported from it; peft's are spelled here (peft's ``CONFIG_NAME`` and
``SAFETENSORS_WEIGHTS_NAME``) because the scratch path must not import peft. ``TRAINER_STATE_NAME`` and
``TRAINING_ARGS_NAME`` are imported from ``transformers.trainer`` where they are used (that import is heavy).
"""

from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

# A run's output folder
RESULTS_NAME = "results.json"
ERROR_NAME = "error.json"  # a comparison cell that failed or was skipped
PREDICTIONS_NAME = "eval_predictions.json"
ARTIFACT_FOLDER = "model"
BASE_FOLDER = "base_model"
MODEL_CARD_NAME = "README.md"

# Weights and their configs
MODEL_CONFIG_NAME = CONFIG_NAME  # config.json: a whole model's, or a scratch delta's
MODEL_WEIGHTS_NAME = SAFE_WEIGHTS_NAME  # model.safetensors: a whole model, or only a scratch delta
MODEL_WEIGHTS_INDEX_NAME = SAFE_WEIGHTS_INDEX_NAME  # a sharded whole model
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTERHUB_CONFIG_NAME = "adapter_config.json"
ADAPTERHUB_WEIGHTS_NAME = "adapter.safetensors"  # AdapterHub's save_adapter(use_safetensors=True)
ADAPTERHUB_TORCH_WEIGHTS_NAME = "pytorch_adapter.bin"  # its default (torch.save), read with weights_only=True
