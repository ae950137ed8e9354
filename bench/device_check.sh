#!/usr/bin/env bash
# The GPU checks in one call of the device machine: `pytest -m gpu`, then the CUDA benchmarks, each step's output
# in $OUT/STEP.txt (8 files come back at most). Prepare here with bench/device_prep.sh. A task's 15 minutes of
# device time (the machine's start included) hold one full call and a short second one right after it, so the
# steps go in order of what the open issues need most, and the second call takes what the first had to skip:
#   run(command="bash bench/device_check.sh tests decoder throughput latency index chat retrain", carry=[".device"], timeout_s=580)
#   run(command="BUDGET=200 bash bench/device_check.sh <the steps it skipped> finetune suite", carry=[".device"], timeout_s=230)
# Steps: tests decoder throughput latency index pixels retrain finetune chat suite quantized (quantized: carry
# .device/bnb). suite: the whole suite on the machine's device (CAPTIONER_TEST_DEVICE=auto), page and server tests
# skipped where their packages are missing (CAPTIONER_TEST_PARTIAL=1: the device image has no streamlit, openai...).
# A step that would not end before BUDGET seconds (default 540) is skipped and says so.
# SMOKE=1 DEVICE=cpu runs every step here at toy sizes on the demo models: a check of this script, not a figure.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-check}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-540}
PY=${PY:-python3}
STEPS="tests decoder throughput latency index pixels retrain finetune chat suite quantized"
for name in "$@"; do
  case " $STEPS " in *" $name "*) ;; *) echo "unknown step $name (steps: $STEPS)"; exit 2 ;; esac
done
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CONFIG=.device/blip-base
MODELS=/tmp/bench-models  # the random chat model, built once for the chat and quantized steps
if [ "${SMOKE:-0}" = 1 ]; then
  CONFIG=${SMOKE_CONFIG:-}
  MODELS=$(mktemp -d) && trap 'rm -rf "$MODELS"' EXIT  # (this machine may run several checks at once)
  small() { echo "$1"; }
else
  small() { echo "$2"; }
fi
config_args() { [ -n "$CONFIG" ] && echo "--config $CONFIG"; }
case " $* " in *" decoder "* | *" throughput "* | *" latency "* | *" retrain "* | *" finetune "*)
  # said before the machine's time goes into steps that would each fail on it
  if [ -n "$CONFIG" ] && [ ! -f "$CONFIG/config.json" ]; then echo "no BLIP-base config in $CONFIG: run bench/device_prep.sh"; exit 2; fi ;;
esac
wheels=$(ls .device/wheels/*.whl .device/bnb/*.whl 2>/dev/null)  # a quantized call may carry .device/bnb alone
if [ -n "$wheels" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/device-site \
    $wheels || exit 1
  export PYTHONPATH="/tmp/device-site:$PWD/.device/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
started=$SECONDS
# the suite's files whose tests failed on an H100 before (issue 9): run first, so a suite cut short by BUDGET runs them
SUITE_FIRST="tests/test_chat.py tests/test_engine_threads.py tests/test_loading.py tests/test_cli.py tests/test_engine.py"

step() {  # step NAME SECONDS COMMAND...: run it under its own timeout, if it fits in what is left of BUDGET
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - (SECONDS - started)))
  if [ "$left" -lt 20 ]; then echo "== $name: skipped, ${left}s left of ${BUDGET}s" | tee "$OUT/$name.txt"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (at most ${limit}s): $*" | tee "$OUT/$name.txt"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" >>"$OUT/$name.txt" 2>&1
  local rc=$?
  echo "== $name: rc=$rc after $((SECONDS - t0))s" | tee -a "$OUT/$name.txt"
  tail -n 40 "$OUT/$name.txt" | grep -v "^== $name"
}

{
  echo "device check, $(date -u +%FT%TZ), DEVICE=$DEVICE SMOKE=${SMOKE:-0}, steps: $*"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, transformers, peft; print('python', sys.version.split()[0], 'torch', torch.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$OUT/environment.txt"

for name in "$@"; do
  case $name in
    tests) step tests 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider -rs tests ;;
    decoder) step decoder 100 "$PY" -m bench.decoder_speed $(config_args) --device "$DEVICE" \
      --batches $(small "1 4" "1 32 256") --repeats $(small 1 3) ;;
    throughput) step throughput 120 "$PY" -m bench.caption_throughput $(config_args) --device "$DEVICE" \
      --images $(small 16 2048) --seed-images $(small 4 16) --rounds 2 ;;
    latency) step latency 100 "$PY" -m bench.caption_latency $(config_args) --device "$DEVICE" \
      --samples $(small 4 32) --users $(small 8 32) --rounds $(small 1 3) ;;
    index) step index 100 "$PY" -m bench.index_throughput --device "$DEVICE" --model $(small demo config:ViT-B-32) \
      --images $(small 40 4000) --plain-images $(small 10 400) --min-side 480 --max-side 1024 ;;
    pixels) step pixels 60 "$PY" -m bench.pixel_throughput --device "$DEVICE" --images $(small 32 2048) \
      --config "${CONFIG:-none}" ;;
    retrain) step retrain 200 "$PY" -m bench.learning_loop $(config_args) --device "$DEVICE" \
      --corrections $(small 3 1000) ;;
    finetune) step finetune 150 "$PY" -m bench.finetune_speed $(config_args) --device "$DEVICE" --rows $(small 16 1000) ;;
    chat) step chat 200 "$PY" -m bench.chat_latency --random blip2 --size $(small small opt-2.7b) --device "$DEVICE" \
      --max-new-tokens 30 --runs $(small 1 5) --no-endpoint --models-dir "$MODELS" ;;
    suite) ignored=$(for file in $SUITE_FIRST; do printf -- "--ignore=%s " "$file"; done)
      # -v: each outcome is in suite.txt as it comes, so a step cut off by BUDGET still tells what ran
      step suite 300 env CAPTIONER_TEST_DEVICE=auto CAPTIONER_TEST_PARTIAL=1 bash -c "
        '$PY' -m pytest -v -p no:cacheprovider -rfEs $SUITE_FIRST; first=\$?
        '$PY' -m pytest -v -p no:cacheprovider -rfEs $ignored tests && exit \$first" ;;
    quantized) for bits in 8bit 4bit; do
      step "chat-$bits" 150 "$PY" -m bench.chat_latency --random blip2 --size opt-2.7b --device "$DEVICE" \
        --max-new-tokens 30 --runs 3 --no-endpoint --quantize "$bits" --models-dir "$MODELS"
    done ;;
  esac
done
echo "device check done in $((SECONDS - started))s"
