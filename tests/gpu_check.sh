#!/usr/bin/env bash
# The one run on a lent GPU: every GPU figure and GPU test of the project, written to $OUT (what comes back) as it
# goes. The device image has torch but not gradio: gradio's wheels travel in .device/wheels and ../shared/tools'
# probes in .device/tools (README, "Measuring on a GPU", says how to fill them). Budget: 10 minutes at most (each part
# has a limit of its own, and what ran comes back).
# Filling .device/wheels (here, with the package registries; the device has no network), for the image's Python 3.12:
#   pip download -d .device/wheels --no-deps --only-binary=:all: --python-version 3.12 --platform any \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
#     gradio==6.31.0 gradio-client==2.7.2 fastapi starlette "pydantic==2.12.5" "pydantic-core==2.41.5" annotated-types \
#     typing-inspection opentelemetry-api uvicorn orjson brotli python-multipart safehttpx semantic-version tomlkit \
#     groovy hf-gradio pydub pytz typing-extensions plotly narwhals safetensors py-spy==0.4.3     # about 49 MB
#   mkdir -p .device/tools && cp ../shared/tools/*.py .device/tools/ && echo /.device/ >> .git/info/exclude
# then the device tool's run: command "bash tests/gpu_check.sh", carry [".device"], timeout 600.
#   PARTS picks what runs (default "tests rooms bench"; "pausing" adds the room whose learners pause, behind the
#   front), ROOMS the rooms' processes (default "auto 1"); PROBES=1 also runs the two probes (about 2 more
#   minutes); GPU_CHECK_ARGS adds arguments to the bench, ROOM_ARGS to the load tests (a dry run on a CPU:
#   GPU_CHECK_ARGS="--device cpu --batch 8 --steps 1 --rounds 1 --sessions 2 --seconds 2"
#   ROOM_ARGS="--sessions 3 --seconds 5").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-assets/bench}
PARTS=${PARTS:-tests rooms bench}
part() { [[ " $PARTS " == *" $1 "* ]]; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
# the image's Python is "externally managed" (PEP 668): pip installs into it only when told to
python -m pip install -q --break-system-packages --no-index --no-deps .device/wheels/*.whl 2>&1 |
  grep -v "^WARNING: Running pip as" | tail -3
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode --format=csv,noheader | tee "$OUT/gpu_card.txt"
python -c "import torch, gradio; print('torch', torch.__version__, 'gradio', gradio.__version__)" | tee -a "$OUT/gpu_card.txt"

# the tests that mean something on a GPU first (graph against eager; the session's promises on CUDA): ~30 s
# (not the static-step rerun: it runs on the CPU, as in CI)
part tests && timeout 70 python -m pytest -q -p no:cacheprovider tests/test_graphstep.py tests/test_session.py \
  tests/test_twin.py tests/test_data.py tests/test_pool.py tests/test_front.py -k "not every_promise and (not \
  test_front or share_of_the_card)" 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"

# the app with 100 learners acting back to back for 60 s: behind the workshop front with this machine's processes
# (PLAYGROUND_PROCESSES=auto), then as one process, the baseline in the same run. ~2.5 minutes each. Each room's app
# log comes back too (a start that hangs writes every process's stacks into it); a front that does not start is
# tried again with 2 processes (is it the count or the front?). Each JSON's gil_profile says where the server's
# Python time went (py-spy, carried as a wheel, attached to the app's processes; its note says if it could not be)
room() {  # room NAME PLAYGROUND_PROCESSES [load test arguments]
  local name=$1 processes=$2
  shift 2
  rm -f "${TMPDIR:-/tmp}"/resnet-load-test-*.log
  # shellcheck disable=SC2086 -- ROOM_ARGS is a list of arguments
  timeout 175 python tests/load_test.py --timeout 30 --app-processes "$processes" "$@" ${ROOM_ARGS:-} \
    --profile "${TMPDIR:-/tmp}/gil_$name.txt" --out "$OUT/app_room_$name.json" 2>&1 | tail -30 |
    tee "$OUT/app_room_$name.txt"
  for log in "${TMPDIR:-/tmp}"/resnet-load-test-*.log; do
    [ -e "$log" ] && tail -c 2000000 "$log" >"$OUT/app_room_$name.log"
  done
  grep -q '"p95_step_ms"' "$OUT/app_room_$name.json" 2>/dev/null
}
if part rooms; then
  for processes in ${ROOMS:-auto 1}; do  # ROOMS: PLAYGROUND_PROCESSES to try, in turn
    room "$processes" "$processes" --sessions 100 --seconds 60 --deadline 165 ||
      { [ "$processes" = auto ] && room 2 2 --sessions 100 --seconds 60 --deadline 165; }
  done
fi
# learners who pause (3 s on average) behind the front: sessions kept 30 s idle, so a pause never frees one
part pausing && room auto_pausing auto --sessions 100 --seconds 40 --think 3 --idle-seconds 30 --deadline 165

# every headless figure: batch 512 loops, one learner at batch 64, rooms of 100 (own streams, one stream, eager)
# shellcheck disable=SC2086 -- GPU_CHECK_ARGS is a list of arguments
part bench && timeout 170 python -m resnet.bench --gpu-check ${GPU_CHECK_ARGS:-} --out "$OUT/gpu_check.json" 2>&1 |
  tee "$OUT/gpu_check.txt"

if [ "${PROBES:-0}" = 1 ]; then
  # the probes import the session module by its old name, resnet.engine: alias it, don't copy them
  for probe in gpu_room_probe gpu_step_probe; do
    timeout 120 python -c "import runpy, sys, resnet.session as s; sys.modules['resnet.engine'] = s;
runpy.run_path('.device/tools/$probe.py', run_name='__main__')" 2>&1 | tail -20 | tee "$OUT/$probe.txt"
  done
fi
