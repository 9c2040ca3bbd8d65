#!/usr/bin/env bash
# The prepared GPU check (issue 11 item 6), in one go: see benchmarks/gpu_check.py's docstring.
#
# On the device machine (from the repository root; carry build/gpu_wheels):
#     bash benchmarks/gpu_check.sh                       # the H200 run (about 4-6 minutes)
# Here, once, with a package index reachable (wheels of hyperbatch's light deps for Python 3.12):
#     bash benchmarks/gpu_check.sh --fetch-wheels
# A CPU smoke run of every stage:
#     bash benchmarks/gpu_check.sh --platform cpu --small
#
# What it does: tees everything to $OUT/gpu_check.log (if $OUT is set), installs the carried
# wheels (build/gpu_wheels/*.whl) into a temp dir for the packages this python lacks, and runs
# gpu_check.py (which imports the repo as the `hyperbatch` namespace through a link tree) under
# a timeout. Environment: PYTHON (default python3), GPU_CHECK_TIMEOUT (default 540 s),
# GPU_CHECK_WHEELS (default build/gpu_wheels).
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
PY="${PYTHON:-python3}"
WHEELS="${GPU_CHECK_WHEELS:-build/gpu_wheels}"
# pure-Python (tenacity) and binary (fastavro) deps the engine path imports that the H200 image
# lacks; versions as pinned by this repo's venv
WHEEL_PINS=("tenacity==9.2.1" "fastavro==1.13.1")

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p "$WHEELS"
  exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$WHEELS" "${WHEEL_PINS[@]}"
fi

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/gpu_check.log") 2>&1
  export GPU_CHECK_TEED=1
fi
echo "gpu_check.sh: $(date -u +%FT%TZ) repo $REPO, python $(command -v "$PY") ($("$PY" -V 2>&1))"

SCRATCH="$(mktemp -d /tmp/hb_gpu_check_sh.XXXXXX)"
trap 'rm -rf "$SCRATCH"' EXIT
SITE="$SCRATCH/site"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  todo=()
  for whl in "$WHEELS"/*.whl; do
    mod="$(basename "$whl" | cut -d- -f1 | tr 'A-Z-' 'a-z_')"
    if "$PY" -c "import importlib.util as u
try: ok = u.find_spec('$mod') is not None
except Exception: ok = False
raise SystemExit(0 if ok else 1)" 2>/dev/null; then
      echo "gpu_check.sh: $mod already importable; $(basename "$whl") not installed"
    else
      todo+=("$whl")
    fi
  done
  if [ "${#todo[@]}" -gt 0 ]; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --target "$SITE" "${todo[@]}"; then
      echo "gpu_check.sh: installed into $SITE: ${todo[*]##*/}"
    else
      echo "gpu_check.sh: WARNING: installing the wheels failed; gpu_check.py uses stand-ins"
    fi
  fi
else
  echo "gpu_check.sh: no wheels in $WHEELS (gpu_check.py uses stand-ins for missing light deps)"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# JAX takes 75% of the GPU by default; transformers' reference (stage 3) shares the rest
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.75}"

if command -v timeout >/dev/null; then
  timeout -k 15 "${GPU_CHECK_TIMEOUT:-540}" "$PY" "$REPO/benchmarks/gpu_check.py" "$@"
else
  "$PY" "$REPO/benchmarks/gpu_check.py" "$@"
fi
rc=$?
[ "$rc" = 124 ] && echo "gpu_check.sh: TIMED OUT after ${GPU_CHECK_TIMEOUT:-540}s"
echo "gpu_check.sh: exit $rc"
exit "$rc"
