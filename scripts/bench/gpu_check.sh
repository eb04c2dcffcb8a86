#!/usr/bin/env bash
# Every recipe and command on this machine's GPU: the `gpu` tests, then one summary table.
#
#   bash scripts/bench/gpu_check.sh IMAGES [WHEELS_DIR]
#
# IMAGES      a labelled image folder (train/<class>/*.jpg), or a .tar/.tar.gz of one (any folder
#             level above train/ is found); a subset of it (500 train + 100 test images per class)
#             is what the tests train on.
# WHEELS_DIR  optional: wheels of the pure-Python packages this machine may lack (jsonargparse,
#             docstring-parser, typeshed-client, LitServe's stack); installed with --no-index.
#
# Needs torch with CUDA, lightning, torchvision already installed (nothing else is downloaded).
# Budget: about 8 minutes on one H100, start-up included. GPU_TESTS_ON_CPU=1 dry-runs it on a CPU
# (with a smaller subset, e.g. PER_CLASS_TRAIN=60 PER_CLASS_TEST=20). GPU_TEST_TIMEOUT caps the tests (s,
# default 420). Files go to $OUT if set.
set -euo pipefail

images=${1:?usage: gpu_check.sh IMAGES(folder or .tar) [WHEELS_DIR]}
wheels=${2:-}
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
out=${OUT:-$work}
started=$(date +%s)

echo "== packages"
missing=$(python - <<'EOF'
import importlib.util
needed = {"jsonargparse": "jsonargparse", "docstring_parser": "docstring-parser", "typeshed_client": "typeshed-client",
          "litserve": "litserve", "multipart": "python-multipart", "requests": "requests", "onnx": "onnx",
          "onnxruntime": "onnxruntime", "onnxscript": "onnxscript", "matplotlib": "matplotlib",
          "tensorboard": "tensorboard", "torchmetrics": "torchmetrics", "pytest": "pytest", "hypothesis": "hypothesis"}
print(" ".join(pip for module, pip in needed.items() if importlib.util.find_spec(module) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "missing: $missing"
  if [ -n "$wheels" ]; then
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
  else
    echo "warning: no WHEELS_DIR given; tests that need them will fail or skip"
  fi
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch, lightning; print('torch', torch.__version__, '| lightning', lightning.__version__, '| cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

echo "== images"
if [ -f "$images" ]; then
  mkdir -p "$work/unpacked"
  tar -xf "$images" -C "$work/unpacked"
  images=$(dirname "$(find "$work/unpacked" -maxdepth 4 -type d -name train | head -n 1)")
fi
[ -d "$images/train" ] || { echo "error: no train/ folder in $1"; exit 2; }
subset="$work/subset"
per_train=${PER_CLASS_TRAIN:-500}
per_test=${PER_CLASS_TEST:-100}
for class_dir in "$images"/train/*/; do
  class=$(basename "$class_dir")
  mkdir -p "$subset/train/$class" "$subset/test/$class"
  # The first files of each class to train on, the next ones to test: links, no copies.
  # (awk, not head, takes the first ones: head would end the pipe early, which pipefail reports.)
  find "$class_dir" -maxdepth 1 -type f | sort \
    | awk -v n="$per_train" -v m="$per_test" -v tr="$subset/train/$class" -v te="$subset/test/$class" \
      'NR <= n { print $0 "\t" tr } NR > n && NR <= n + m { print $0 "\t" te }' | while IFS=$'\t' read -r file dest; do
    ln -s "$file" "$dest/"
  done
done
echo "subset: $(find "$subset/train" -type l | wc -l) train, $(find "$subset/test" -type l | wc -l) test images in $subset"

echo "== gpu tests"
cd "$repo"
set +e
GPU_TEST_DATA="$subset" XDG_CACHE_HOME="$work/cache" timeout "${GPU_TEST_TIMEOUT:-420}" python -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider \
  -q -rA --durations=0 --junitxml="$out/gpu_tests.xml" 2>&1 | tee "$out/gpu_tests.log" | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|^E " | head -80
status=${PIPESTATUS[0]}
set -e

echo "== summary"
python - "$out/gpu_tests.xml" "$started" <<'EOF'
import sys, time, xml.etree.ElementTree as ET
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
passed = sum(r[1] == "passed" for r in rows)
print(f"{passed}/{len(rows)} passed; {time.time() - int(sys.argv[2]):.0f} s in all")
EOF
exit "$status"
