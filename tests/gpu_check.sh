#!/usr/bin/env bash
# The one run on a lent GPU: every GPU figure and GPU test of the project, written to $OUT (what comes back) as it
# goes. The device image has torch but not gradio: gradio's wheels travel in .device/wheels and ../shared/tools'
# probes in .device/tools (README, "Measuring on a GPU", says how to fill them). Budget: under 8 minutes.
# Filling .device/wheels (here, with the package registries; the device has no network), for the image's Python 3.12:
#   pip download -d .device/wheels --no-deps --only-binary=:all: --python-version 3.12 --platform any \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#     gradio==6.31.0 gradio-client==2.7.2 fastapi starlette "pydantic==2.12.5" "pydantic-core==2.41.5" annotated-types \
#     typing-inspection opentelemetry-api uvicorn orjson brotli python-multipart safehttpx semantic-version tomlkit \
#     groovy hf-gradio pydub pytz typing-extensions plotly narwhals safetensors       # about 46 MB
#   mkdir -p .device/tools && cp ../shared/tools/*.py .device/tools/ && echo /.device/ >> .git/info/exclude
# then the device tool's run: command "bash tests/gpu_check.sh", carry [".device"], timeout 600.
#   PROBES=1 also runs the two probes (about 2 more minutes); GPU_CHECK_ARGS adds arguments to the bench (a dry run
#   on a CPU: GPU_CHECK_ARGS="--device cpu --batch 8 --steps 1 --rounds 1 --sessions 2 --seconds 2").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-assets/bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
# the image's Python is "externally managed" (PEP 668): pip installs into it only when told to
python -m pip install -q --break-system-packages --no-index --no-deps .device/wheels/*.whl 2>&1 |
  grep -v "^WARNING: Running pip as" | tail -3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu_card.txt"
python -c "import torch, gradio; print('torch', torch.__version__, 'gradio', gradio.__version__)" | tee -a "$OUT/gpu_card.txt"

PART=${PART:-all}  # all; or rooms: only the app's rooms (the load test, against the app's own processes)
if [ "$PART" = rooms ]; then
  # 100 learners acting back to back for 60 s, then pausing 3 s on average for 40 s (an idle limit over their pauses)
  # shellcheck disable=SC2086 -- ROOM_ARGS is a list of arguments
  timeout 200 python tests/load_test.py --sessions 100 --seconds 60 --timeout 30 --deadline 190 ${ROOM_ARGS:-} \
    --out "$OUT/app_room.json" 2>&1 | tail -40 | tee "$OUT/app_room.txt"
  # shellcheck disable=SC2086
  timeout 170 python tests/load_test.py --sessions 100 --seconds 40 --think 3 --idle-seconds 20 --timeout 30 \
    --deadline 160 ${ROOM_ARGS:-} --out "$OUT/app_room_thinking.json" 2>&1 | tail -40 | tee "$OUT/app_room_thinking.txt"
  exit 0
fi

# the tests that mean something on a GPU first (graph against eager; the session's promises on CUDA): ~1 minute
# (not the static-step rerun: it runs on the CPU, as in CI)
timeout 110 python -m pytest -q -p no:cacheprovider tests/test_graphstep.py tests/test_session.py tests/test_twin.py \
  tests/test_data.py tests/test_pool.py -k "not every_promise" 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"

# every figure: batch 512 loops, one learner at batch 64, rooms of 100 (own streams, one stream, eager), the app with
# 100 learners acting back to back, then pausing as people do (its JSON is written after each part)
# shellcheck disable=SC2086 -- GPU_CHECK_ARGS is a list of arguments
timeout 470 python -m resnet.bench --gpu-check --app ${GPU_CHECK_ARGS:-} --out "$OUT/gpu_check.json" 2>&1 |
  tee "$OUT/gpu_check.txt"

if [ "${PROBES:-0}" = 1 ]; then
  # the probes import the session module by its old name, resnet.engine: alias it, don't copy them
  for probe in gpu_room_probe gpu_step_probe; do
    timeout 120 python -c "import runpy, sys, resnet.session as s; sys.modules['resnet.engine'] = s;
runpy.run_path('.device/tools/$probe.py', run_name='__main__')" 2>&1 | tail -20 | tee "$OUT/$probe.txt"
  done
fi
