#!/usr/bin/env bash
# One short check of the learner on a GPU machine: the machine and versions, the learner bench on
# CUDA in fp32 (TF32 off), TF32 and bf16 for B = 32 and 128, uniform and lite batches, a short CPU
# comparison on that machine's CPU, the precision / GRU tests on CUDA, and the one-process trainer
# (pre-training, then a short online run) on CUDA. Each step has its own time limit (about 9
# minutes in all at most; usually 4 to 5).
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh          # on the GPU machine, from the repo root
#   OUT=/tmp/x bash benchmarks/gpu_check.sh --cpu-only  # rehearsal without a GPU: skips CUDA parts
#
# Needs Python with torch and numpy only (no Reverb, TensorFlow, PyYAML or network): the bench's
# imports are checked first with those blocked. Every step runs under its own timeout and the
# script goes on after a failure; each step's exit status is in $OUT/gpu_check.status, its output
# in $OUT/gpu_check.log; the bench writes $OUT/bench_cuda/learner.{md,json} and
# $OUT/bench_cpu/learner.{md,json}.
set -u
CPU_ONLY=0
[ "${1:-}" = "--cpu-only" ] && CPU_ONLY=1
OUT=${OUT:?set OUT to a directory for the results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/gpu_check.log"
STATUS="$OUT/gpu_check.status"
: >"$LOG"
: >"$STATUS"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s)" | tee -a "$LOG"
    timeout "$limit" bash -c '"$@"' step "$@" 2>&1 | tee -a "$LOG"  # bash -c: runs functions too
    local rc=${PIPESTATUS[0]}
    echo "$name $rc" >>"$STATUS"
    echo "=== $name: exit $rc" | tee -a "$LOG"
}

versions() {
    "$PY" - <<'PY'
import platform, torch, numpy
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version(), "| numpy", numpy.__version__)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability(),
          "bf16:", torch.cuda.is_bf16_supported())
PY
}

imports_without_extras() {  # the bench and the tests must not need Reverb, TF, PyYAML or replay/
    "$PY" - <<'PY'
import sys
for name in ("yaml", "tensorflow", "reverb", "replay", "grpc", "h5py", "matplotlib", "tqdm"):
    sys.modules[name] = None  # importing any of these now raises ImportError
sys.path.insert(0, "benchmarks")
import bench_learner  # noqa: F401
from learner.qmix_learner import QMixLearner  # noqa: F401
print("lite 3s5z lengths (the lite batches' shape):", bench_learner.lite_lengths(4, seed=0).tolist())
print("bench_learner imports without yaml/tensorflow/reverb/replay/grpc/h5py/matplotlib/tqdm: ok")
PY
}

tests_on_devices() {  # the precision and hand-written GRU tests, on cpu and (if present) cuda
    # NO_PYTEST=1 rehearses the fallback where pytest is installed
    if [ -z "${NO_PYTEST:-}" ] && "$PY" -c "import pytest" 2>/dev/null; then
        "$PY" -m pytest -q -p no:cacheprovider tests/test_networks.py \
            tests/test_learner_update.py -k "bf16 or precision or hand_written"
        return
    fi
    echo "(no pytest here: running the device-parametrised tests directly)"
    "$PY" - <<'PY'
import sys, types, torch
stub = types.ModuleType("pytest")  # just enough for the test modules to import
stub.mark = types.SimpleNamespace(parametrize=lambda *a, **k: (lambda f: f))
stub.fixture = lambda f: f
stub.approx = lambda x, **k: x
stub.raises = None
sys.modules["pytest"] = stub
torch.set_num_threads(1)  # what the one_thread fixture does for the precision test
sys.path.insert(0, "tests")
import test_learner_update as lu
import test_networks as nw
failed = 0
for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
    cases = [(nw.test_hand_written_unroll_equals_nn_gru_in_values_and_gradients, (device, None)),
             (nw.test_hand_written_unroll_in_bf16_stays_within_2_percent_of_fp32, (device, None))]
    cases += [(lu.test_bf16_updates_track_fp32_updates_from_the_same_weights, (device, v, None))
              for v in ("td", "cql_ovm")]
    for test, args in cases:
        torch.set_float32_matmul_precision("highest")  # the strict_fp32 fixture (an fp32 learner
        torch.backends.cudnn.allow_tf32 = False  # on CUDA turns TF32 on for the process)
        try:
            test(*args)
            print("PASSED", test.__name__, args[:2])
        except Exception as error:  # report and go on
            failed += 1
            print("FAILED", test.__name__, args[:2], repr(error)[:500])
sys.exit(1 if failed else 0)
PY
}

one_process_trainer() {  # the one-process trainer, unchanged, on the learner device (no Reverb)
    local device=$1 updates=$2 steps=$3 dir="/tmp/ovmse_trainer_$1"  # not in $OUT: only logs return
    local common=(--map 2s3z --set "run.run_dir=$dir" --set "learner.device=$device"
                  --set learner.batch_size=128 --set actor.test_episodes=32 --set run.log_interval_s=5)
    "$PY" -m deploy.cli dataset collect --map 2s3z --policy heuristic --epsilon 0.2 --episodes 300 \
        --out "$dir/2s3z.h5" 2>&1 | grep -v "ep/s" || return 1
    "$PY" -m deploy.cli pretrain "${common[@]}" --dataset "$dir/2s3z.h5" --set run.name=pretrain \
        --set "learner.offline_updates=$updates" --set learner.cql_sampler=available_only \
        --set actor.final_test_episodes=64 --set run.offline_eval_interval=0 2>&1 | grep -v "ep/s" || return 1
    "$PY" -m deploy.cli train --mode sync "${common[@]}" --set "run.dataset=$dir/2s3z.h5" \
        --set "run.init_checkpoint=$dir/pretrain/checkpoints/offline.pt" --set run.name=online \
        --set "run.online_env_steps=$steps" --set run.eval_interval_steps=2500 \
        --set actor.final_test_episodes=64 2>&1 | grep -v "ep/s"
}

export PY NO_PYTEST=${NO_PYTEST:-}
export -f versions imports_without_extras tests_on_devices one_process_trainer

if [ "$CPU_ONLY" = 0 ]; then
    step nvidia-smi 30 nvidia-smi
fi
step versions 30 versions
step imports 30 imports_without_extras
if [ "$CPU_ONLY" = 0 ]; then
    # 36 rows (3 kinds x 2 shapes x 2 batch sizes x fp32/tf32/bf16), 2 rounds each.
    step bench-cuda 180 "$PY" benchmarks/bench_learner.py --devices cuda --rounds 2 \
        --batch-sizes 32,128 --shapes uniform,lite --gpu-precisions fp32,tf32,bf16 --out "$OUT/bench_cuda"
    CPU_ARGS=(--batch-sizes 128 --threads "$(nproc)")
else
    CPU_ARGS=(--batch-sizes 4 --threads 1 --rounds 1)  # the rehearsal only checks that it runs
fi
# This machine's CPU: TD update, fp32 vs bf16 against the PyMARL2-style learner; then the same
# with the hand-written GRU (off by default: on the 2-core dev Xeon it did not pay).
step bench-cpu 60 "$PY" benchmarks/bench_learner.py --devices cpu --kinds td --shapes uniform \
    --rounds 3 "${CPU_ARGS[@]}" --out "$OUT/bench_cpu"
step bench-cpu-hand-gru 60 "$PY" benchmarks/bench_learner.py --devices cpu --kinds td --shapes uniform \
    --rounds 3 "${CPU_ARGS[@]}" --hand-written-gru --out "$OUT/bench_cpu_hand_gru"
step tests 90 tests_on_devices
if [ "$CPU_ONLY" = 0 ]; then
    step trainer-cuda 180 one_process_trainer cuda 300 12000
else
    step trainer-cpu 150 one_process_trainer cpu 5 400
fi
echo "--- exit status per step (0 = ok, 124 = timed out):" | tee -a "$LOG"
tee -a "$LOG" <"$STATUS"
