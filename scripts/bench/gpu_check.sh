#!/usr/bin/env bash
# Everything that needs the GPU, in one command: a profile of fast.yaml's steps, the `gpu` tests,
# the airbench race; then one summary of all three.
#
#   bash scripts/bench/gpu_check.sh IMAGES [WHEELS_DIR]
#
# IMAGES       a labelled image folder (train/<class>/*.jpg), or a .tar/.tar.gz of one (any folder
#              level above train/ is found). The profile and the race use all of it; the tests a
#              subset (PER_CLASS_TRAIN=500 train + PER_CLASS_TEST=100 test images per class).
# WHEELS_DIR   optional: wheels of the pure-Python packages this machine may lack (jsonargparse,
#              docstring-parser, typeshed-client, uvicorn, starlette); installed with --no-index.
# AIRBENCH_DIR (variable) the folder with airbench94.py and airbench94_muon.py; without it, or
#              without CUDA, the race runs our sides only.
#
# Parts, in this order (PARTS=profile,tests,race picks some):
#   profile  scripts/bench/gpu_profile.py: torch.profiler over 15 steps of configs/fast.yaml after 11
#            warm-up steps; the top host ops and CUDA kernels by self time, a JSON and a Chrome trace.
#   tests    pytest -m gpu tests/test_gpu.py on the subset (GPU_TEST_TIMEOUT caps it, s, default 420).
#   race     scripts/bench/airbench_race.py: airbench94 against fast.yaml (RACE_RUNS=5 runs each),
#            airbench94_muon against fast.yaml + fast_muon.yaml (MUON_RUNS=3 each), fast.yaml with
#            --trainer.precision bf16-true, with --model.compile true and with airbench's lookahead
#            (the Lookahead callback; fast.yaml leaves it off) (VARIANT_RUNS=1 each). A side
#            that fails prints its error in one line and the race goes on; a side that would end
#            after BUDGET_S (default 540) seconds from this script's start is skipped, and says so.
#
# Budget on one H100, estimated from the last measured figures (fit.py with fast.yaml 24.5 s from
# launch, airbench94 5.2 s a run, the tests and set-up 130-160 s): set-up and tests ~150 s; profile
# ~35 s (decoding the 50,000 images once, ~15 s; start-up; 26 steps; a validation); race ~335 s
# (the data export 10, airbench94 x5 20, ours x5 125, airbench94_muon x3 20, ours+fast_muon x3 75,
# bf16-true 25, compile 30, lookahead 25). About 9 minutes in all; MUON_RUNS=5 adds ~55 s, PARTS=profile,race
# saves ~150 s; BUDGET_S keeps the whole under the device tool's 10-minute limit.
#
# Needs torch with CUDA, lightning, torchvision already installed (nothing else is downloaded).
# GPU_TESTS_ON_CPU=1 dry-runs all of it on a CPU, on the subset (e.g. PER_CLASS_TRAIN=60
# PER_CLASS_TEST=20), with a tiny network, one epoch and one run per side. Files go to $OUT if set:
# gpu_check.log (all of this output), gpu_tests.{xml,log}, profile.json, profile_trace.json.gz, race.json;
# the rest goes to a temporary folder, deleted at the end when $OUT is set.
set -euo pipefail

images=${1:?usage: gpu_check.sh IMAGES(folder or .tar) [WHEELS_DIR]}
wheels=${2:-}
# Absolute, because the parts run from the repository root.
[ -e "$images" ] && images=$(realpath "$images")
[ -n "${AIRBENCH_DIR:-}" ] && [ -e "$AIRBENCH_DIR" ] && AIRBENCH_DIR=$(realpath "$AIRBENCH_DIR")
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
out=${OUT:-$work}
started=$(date +%s)
parts=${PARTS:-profile,tests,race}
dry=${GPU_TESTS_ON_CPU:-0}
mkdir -p "$out"
# The unpacked images, caches and run folders are hundreds of MB; with $OUT set nothing kept is in them.
[ "$out" = "$work" ] || trap 'rm -rf "$work"' EXIT
exec > >(tee -a "$out/gpu_check.log") 2>&1
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XDG_CACHE_HOME="$work/cache"

install_packages() {
  local missing absent
  missing=$(python - <<'EOF'
import importlib.util
needed = {"jsonargparse": "jsonargparse", "docstring_parser": "docstring-parser", "typeshed_client": "typeshed-client",
          "uvicorn": "uvicorn", "starlette": "starlette", "multipart": "python-multipart", "requests": "requests", "onnx": "onnx",
          "onnxruntime": "onnxruntime", "onnxscript": "onnxscript", "matplotlib": "matplotlib",
          "tensorboard": "tensorboard", "torchmetrics": "torchmetrics", "pytest": "pytest", "hypothesis": "hypothesis"}
print(" ".join(pip for module, pip in needed.items() if importlib.util.find_spec(module) is None))
EOF
)
  [ -z "$missing" ] && return 0
  echo "missing: $missing"
  if [ -z "$wheels" ]; then
    echo "warning: no WHEELS_DIR given; tests that need them will fail or skip"
    return 0
  fi
  # The wheels of packages this machine lacks or has older (the missing ones and their own needs),
  # with --no-deps: letting pip resolve against the machine's packages can refuse the whole set
  # over one pin, and a wheel must never downgrade the machine's own copy.
  absent=$(python - "$wheels" <<'EOF'
import sys
from importlib import metadata
from pathlib import Path
from packaging.version import Version
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    try:
        if Version(metadata.version(name)) >= Version(version):
            continue
    except metadata.PackageNotFoundError:
        pass
    print(wheel)
EOF
)
  if [ -n "$absent" ]; then
    python -m pip install -q --no-index --no-deps $absent || echo "warning: some could not be installed from $wheels"
  fi
}

unpack_images() {
  if [ -f "$images" ]; then
    mkdir -p "$work/unpacked"
    tar -xf "$images" -C "$work/unpacked"
    images=$(dirname "$(find "$work/unpacked" -maxdepth 4 -type d -name train | head -n 1)")
  fi
  [ -d "$images/train" ] || { echo "error: no train/ folder in $1; give an image folder or a tar of one"; exit 2; }
}

make_subset() {
  local class_dir class
  subset="$work/subset"
  for class_dir in "$images"/train/*/; do
    class=$(basename "$class_dir")
    mkdir -p "$subset/train/$class" "$subset/test/$class"
    # The first files of each class to train on, the next ones to test: links, no copies.
    # (awk, not head, takes the first ones: head would end the pipe early, which pipefail reports.)
    find "$class_dir" -maxdepth 1 -type f | sort \
      | awk -v n="${PER_CLASS_TRAIN:-500}" -v m="${PER_CLASS_TEST:-100}" -v tr="$subset/train/$class" \
        -v te="$subset/test/$class" 'NR <= n { print $0 "\t" tr } NR > n && NR <= n + m { print $0 "\t" te }' \
      | while IFS=$'\t' read -r file dest; do ln -s "$file" "$dest/"; done
  done
  echo "subset: $(find "$subset/train" -type l | wc -l) train, $(find "$subset/test" -type l | wc -l) test images in $subset"
}

# The profile and the race train on all the images on the GPU; a dry run on the subset, on the CPU,
# with a network small enough for a few seconds a run.
bench_settings() {
  if [ "$dry" = 1 ]; then
    bench_data=$subset accelerator=cpu runs=1 muon_runs=1 variant_runs=1
    val_size=$(($(find "$subset/train" -type l | wc -l) / 10))
    tiny="--trainer.precision 32-true --model.net.widths [8,16,16] --model.channels_last false --data.batch_size 32"
    tiny+=" --data.eval_batch_size 64 --trainer.enable_progress_bar false"
    profile_args=(--wait 2 --steps 3 --extra "--trainer.accelerator cpu --data.val_size $val_size $tiny")
  else
    bench_data=$images accelerator=gpu runs=${RACE_RUNS:-5} muon_runs=${MUON_RUNS:-3} variant_runs=${VARIANT_RUNS:-1}
    val_size=5000 tiny=""
    profile_args=(--wait 10 --steps 15)
  fi
}

part_profile() {
  python scripts/bench/gpu_profile.py --images_dir "$bench_data" "${profile_args[@]}" --work_dir "$work/profile" \
    --json "$out/profile.json" --trace "$out/profile_trace.json.gz" | tee "$work/profile.out"
}

part_tests() {
  GPU_TEST_DATA="$subset" timeout "${GPU_TEST_TIMEOUT:-420}" python -m pytest -m gpu tests/test_gpu.py \
    -p no:cacheprovider -q -rA --durations=0 --junitxml="$out/gpu_tests.xml" 2>&1 | tee "$out/gpu_tests.log" \
    | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|^E " | head -80
  return "${PIPESTATUS[0]}"
}

race_sides() {
  if [ -n "${AIRBENCH_DIR:-}" ] && [ -f "$AIRBENCH_DIR/airbench94.py" ] && [ "$cuda" = True ]; then
    echo "airbench94,ours,airbench94_muon:$muon_runs"
  else
    echo "note: the race runs our sides only (airbench needs CUDA and AIRBENCH_DIR=the folder with airbench94.py)" >&2
    echo "ours"
  fi
}

part_race() {
  local left=$((${BUDGET_S:-540} - ($(date +%s) - started)))
  [ "$left" -gt 0 ] || { echo "race: skipped, BUDGET_S=${BUDGET_S:-540} is spent; raise it or drop a part"; return 0; }
  python scripts/bench/airbench_race.py --images_dir "$bench_data" --airbench_dir "${AIRBENCH_DIR:-.}" \
    --sides "$(race_sides)" --runs "$runs" --val_size "$val_size" --accelerator "$accelerator" --deadline_s "$left" \
    --extra "${tiny:+--trainer.max_epochs 1 $tiny}" --variant "fast_muon:$muon_runs=--config configs/fast_muon.yaml" \
    --variant "bf16-true:$variant_runs=--trainer.precision bf16-true" \
    --variant "compile:$variant_runs=--model.compile true" \
    --variant "lookahead:$variant_runs=--trainer.callbacks+=lightning_modules.callbacks.Lookahead" --work_dir "$work/race" --json "$out/race.json" \
    | tee "$work/race.out"
  return "${PIPESTATUS[0]}"
}

tests_table() {
  [ -f "$out/gpu_tests.xml" ] || { echo "tests: no gpu_tests.xml (see gpu_tests.log)"; return 0; }
  python - "$out/gpu_tests.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
import torch
cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
rows = []
for case in cases:
    outcome = "passed"
    for kind in ("failure", "error", "skipped"):
        node = case.find(kind)
        if node is not None:
            outcome = f"{kind}: {(node.get('message') or '').splitlines()[0][:70] if node.get('message') else ''}"
    rows.append((case.get("name"), outcome, float(case.get("time", 0))))
width = max(len(r[0]) for r in rows) if rows else 10
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)"
print(f"{'test':<{width}}  {'seconds':>7}  outcome      [{device}, torch {torch.__version__}]")
for name, outcome, seconds in rows:
    print(f"{name:<{width}}  {seconds:7.1f}  {outcome}")
print(f"{sum(r[1] == 'passed' for r in rows)}/{len(rows)} passed")
EOF
}

# The tables last, where a caller that keeps only the end of the output still sees them.
summary() {
  echo "== summary"
  [ -f "$work/profile.out" ] && sed -n '/^profile: /,$p' "$work/profile.out" && echo
  [ -f "$work/tests.ran" ] && tests_table && echo
  [ -f "$work/race.out" ] && awk 'BEGIN { RS = "" } { last = $0 } END { print last }' "$work/race.out" && echo
  echo "parts: $outcomes; $(($(date +%s) - started)) s in all"
}

echo "== packages"
install_packages
cuda=$(python -c "import torch; print(torch.cuda.is_available())")
python -c "import torch, lightning; print('torch', torch.__version__, '| lightning', lightning.__version__, '| cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
echo "== images"
unpack_images "$images"
subset=""
if [[ ",$parts," == *,tests,* || "$dry" = 1 ]]; then make_subset; fi
bench_settings
cd "$repo"
status=0 outcomes=""
for part in profile tests race; do
  [[ ",$parts," == *,$part,* ]] || continue
  echo "== $part"
  [ "$part" = tests ] && touch "$work/tests.ran"
  set +e
  "part_$part"
  rc=$?
  set -e
  outcomes+="${outcomes:+, }$part exit $rc"
  [ "$status" = 0 ] && status=$rc
done
summary
exit "$status"
