#!/usr/bin/env bash
# GPU smoke test: what only a GPU can show, one line per check (PASS, FAIL or SKIP, seconds, finding).
#
#   bash benchmarks/gpu_smoke.sh              # on a machine with NVIDIA GPUs (at most 10 min on one GPU, see below)
#   bash benchmarks/gpu_smoke.sh --dry-run    # anywhere: list the checks and parse every command, run nothing
#
# One GPU: every cell on the tiny preset on the GPU in bf16; every cell with gradient checkpointing (prefix tuning
# refuses it); `evaluate` and `predict` on a finished run; every scratch artifact loaded with device_map="cuda"; one
# epoch of the seed recipe (t5-small, batch 32, lr 1e-5) on 2,000 IMDB reviews with its train samples/s and eval time.
# Two GPUs or more, in addition: every cell under torchrun (2 processes, DDP); LoRA scratch and library under FSDP2
# (configs/accelerate/fsdp_t5.yaml); full fine-tuning under DeepSpeed ZeRO-3 (configs/accelerate/deepspeed_zero3.yaml,
# when deepspeed is installed).
#
# Each check has a time limit (over it: FAIL, "over N s"; --dry-run lists them); the one-GPU checks' limits add up to
# 570 s, so on one GPU the script ends within 10 minutes whatever happens.
#
# Settings (environment): PYTHON (default python), SMOKE_DIR (default outputs/gpu-smoke-<time>: each check's output
# and its log in logs/), SMOKE_T5 and SMOKE_IMDB (t5-small and IMDB for the seed epoch; default ../shared/models/t5-small
# and ../shared/data/imdb, else the Hub's t5-small and imdb when SMOKE_ONLINE=1; a model folder without weights is
# trained from random init). Exit code: 0 when every check passed or was skipped, 1 when one failed, 2 without a GPU.
#
# Not yet run on a GPU: written without one (no GPU was lent); its dry run is tested (tests/test_gpu_smoke.py).
set -u
cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python}
CHECKS=benchmarks/gpu_smoke_checks.py
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  -h|--help) sed -n '2,/^set -u/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "error: unknown option ${1}; use --dry-run or --help" >&2; exit 2 ;;
esac

if (( DRY )); then
  GPUS=2  # list every check
  COMMANDS=$(mktemp)
  trap 'rm -f "$COMMANDS"' EXIT
  SMOKE_DIR=${SMOKE_DIR:-outputs/gpu-smoke-dry-run}
else
  GPUS=$("$PYTHON" "$CHECKS" gpus 2>/dev/null | tail -1)
  if ! [[ "$GPUS" =~ ^[0-9]+$ ]]; then
    echo "error: $PYTHON cannot import torch here; install the project first (pip install -e .)" >&2
    exit 2
  fi
  if (( GPUS < 1 )); then
    echo "error: no GPU is visible (torch.cuda.device_count() is 0): this smoke test checks the GPU paths; on CPUs run the tests (python -m pytest -q), or list the checks with --dry-run" >&2
    exit 2
  fi
  SMOKE_DIR=${SMOKE_DIR:-outputs/gpu-smoke-$(date +%Y%m%d-%H%M%S)}
  mkdir -p "$SMOKE_DIR/logs"
  echo "gpu smoke: $GPUS GPU(s), $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null), outputs in $SMOKE_DIR"
fi
FAILED=0
TINY=(--preset tiny --use_cpu false --bf16 true)

# check NAME SECONDS VERIFY -- COMMAND...: run COMMAND (at most SECONDS), then the gpu_smoke_checks.py check VERIFY
# (a string of its words; empty: the command's success is the finding); print one line.
check() {
  local name=$1 limit=$2 verify=$3
  shift 4
  if (( DRY )); then
    printf '%s\t%s\t' "$name" "$limit" >> "$COMMANDS"
    printf '%q ' "$@" >> "$COMMANDS"
    printf '\n' >> "$COMMANDS"
    return
  fi
  local log="$SMOKE_DIR/logs/$name.log" start=$SECONDS status=PASS finding code
  timeout "$limit" "$@" > "$log" 2>&1
  code=$?
  if (( code != 0 )); then
    status=FAIL
    finding="exit $code$( (( code == 124 )) && echo " (over ${limit} s)"): $(grep -m1 '^error:' "$log" || tail -n 1 "$log") (log: $log)"
  elif [[ -n "$verify" ]]; then
    # shellcheck disable=SC2086  # VERIFY is a list of words
    finding=$("$PYTHON" "$CHECKS" $verify 2>&1 | tail -n 1) || status=FAIL
  else
    finding=$(tail -n 1 "$log")
  fi
  (( ${#finding} > 300 )) && finding="${finding:0:300}..."
  printf '%-4s %-24s %4ds  %s\n' "$status" "$name" $((SECONDS - start)) "$finding"
  [[ $status == FAIL ]] && FAILED=$((FAILED + 1))
  return 0
}

skip() {
  if (( DRY )); then printf 'SKIP %-24s %s\n' "$1" "$2" >> "$COMMANDS.skipped"; else printf 'SKIP %-24s    -   %s\n' "$1" "$2"; fi
}

D=$SMOKE_DIR
# ---- one GPU
check cells-bf16 150 "cells $D/cells 1 single" -- \
  "$PYTHON" run_experiment.py "${TINY[@]}" --method all --output_dir "$D/cells"
check gradient-checkpointing 150 \
  "cells $D/checkpointing 1 single --refused prefix_tuning gradient_checkpointing" -- \
  "$PYTHON" run_experiment.py "${TINY[@]}" --method all --gradient_checkpointing true --output_dir "$D/checkpointing"
check evaluate 45 "evaluated $D/cells/lora-scratch $D/evaluate" -- \
  "$PYTHON" run_experiment.py evaluate "$D/cells/lora-scratch" --bf16 true --output_dir "$D/evaluate"
check predict 45 "predicted $D/logs/predict.log" -- \
  "$PYTHON" run_experiment.py predict "$D/cells/lora-scratch" "a wonderful film" "a dull, tedious film"
check device-map-cuda 60 "" -- "$PYTHON" "$CHECKS" device-map "$D/cells"

T5=${SMOKE_T5:-../shared/models/t5-small}
IMDB=${SMOKE_IMDB:-../shared/data/imdb}
if [[ ! -e $T5 || ! -e $IMDB ]] && [[ ${SMOKE_ONLINE:-0} == 1 ]]; then T5=t5-small; IMDB=imdb; fi
if [[ -e $T5 && -e $IMDB ]] || [[ $T5 == t5-small && $IMDB == imdb ]] || (( DRY )); then
  RANDOM_INIT=()
  [[ -d $T5 ]] && ! compgen -G "$T5/*.safetensors" > /dev/null && RANDOM_INIT=(--random_init true)
  check seed-recipe-epoch 120 "run $D/seed 1 single" -- \
    "$PYTHON" run_experiment.py --model_name_or_path "$T5" "${RANDOM_INIT[@]}" --dataset_name "$IMDB" \
    --max_train_samples 2000 --max_eval_samples 2000 --num_train_epochs 1 --bf16 true --output_dir "$D/seed"
else
  skip seed-recipe-epoch "no t5-small and IMDB here ($T5, $IMDB): set SMOKE_T5 and SMOKE_IMDB, or SMOKE_ONLINE=1"
fi

# ---- two GPUs
if (( GPUS >= 2 )); then
  TORCHRUN=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2)
  ACCELERATE=("$PYTHON" -m accelerate.commands.launch --num_processes 2)
  check torchrun-cells 420 "cells $D/torchrun-cells 2 ddp" -- \
    "${TORCHRUN[@]}" run_experiment.py "${TINY[@]}" --method all --output_dir "$D/torchrun-cells"
  for implementation in scratch library; do
    check "fsdp2-lora-$implementation" 240 "run $D/fsdp-lora-$implementation 2 fsdp2" -- \
      "${ACCELERATE[@]}" --config_file configs/accelerate/fsdp_t5.yaml run_experiment.py "${TINY[@]}" \
      --method lora --implementation "$implementation" --output_dir "$D/fsdp-lora-$implementation"
  done
  if (( DRY )) || "$PYTHON" -c "import deepspeed" > /dev/null 2>&1; then
    check zero3-full 300 "run $D/zero3-full 2 deepspeed-zero3" -- \
      "${ACCELERATE[@]}" --config_file configs/accelerate/deepspeed_zero3.yaml run_experiment.py "${TINY[@]}" \
      --method full --output_dir "$D/zero3-full"
  else
    skip zero3-full "deepspeed is not installed (pip install deepspeed)"
  fi
else
  skip two-gpu-checks "one GPU: torchrun, FSDP2 and ZeRO-3 need two"
fi

if (( DRY )); then
  "$PYTHON" "$CHECKS" parse "$COMMANDS"
  code=$?
  [[ -f "$COMMANDS.skipped" ]] && cat "$COMMANDS.skipped" && rm -f "$COMMANDS.skipped"
  exit $code
fi
echo "gpu smoke: $FAILED check(s) failed; outputs and logs in $SMOKE_DIR"
(( FAILED == 0 ))
