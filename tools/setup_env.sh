#!/usr/bin/env bash
# One-command setup of gpusq_mm and the OpenMMLab stack it plugs into.
#
#   bash tools/setup_env.sh            # creates/updates ./.venv
#   GPUSQ_VENV=/path/to/venv bash tools/setup_env.sh
#   GPUSQ_VENV=none bash tools/setup_env.sh   # use the active python as is
#
# What it does (the manual equivalent is in README.md, "Setup"):
#   1. torch 2.14.1 + torchvision 0.29.1, only when no torch is installed
#      (an existing torch, e.g. a CUDA build on a GPU box, is kept);
#   2. mmengine, then mmcv 2.1.0 *with compiled ops* built from the PyPI
#      sdist (setuptools<70, --no-build-isolation, -std=c++20 for
#      torch >= 2.14). The built wheel is cached under
#      ${GPUSQ_CACHE:-~/.cache/gpusq_mm}/wheels/<python>-<torch>-<cuda>/ and
#      reused, so a second run takes seconds; pip's own wheel cache is not
#      used for mmcv because it would hand a wheel built against one torch
#      to another (ABI errors);
#   3. mmdet 3.3.0, mmsegmentation 1.2.2 (+ ftfy, regex), mmpretrain 1.2.0,
#      pytorch-quantization 2.1.3, onnx, onnxruntime and test tools;
#   4. this package, editable.
# Every pip call is held to requirements/constraints.txt (exact versions of
# the packages around torch), so a fresh machine gets the measured stack.
# Idempotent: every step checks what is installed first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GPUSQ_VENV:-$ROOT/.venv}"
CACHE="${GPUSQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpusq_mm}"
MMCV_VERSION=2.1.0

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [[ "$VENV" != none ]]; then
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtual environment $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
else
  PY="${PYTHON:-python3}"
fi
PIP=("$PY" -m pip --disable-pip-version-check)
# every install is held to the versions the project was measured with
INSTALL=("${PIP[@]}" install -c "$ROOT/requirements/constraints.txt")
log "python: $PY ($("$PY" --version 2>&1))"

have() {  # have DIST [VERSION]: is the distribution installed (at VERSION)?
  "$PY" - "$@" <<'PYEOF'
import sys
from importlib import metadata
try:
    v = metadata.version(sys.argv[1])
except metadata.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if len(sys.argv) < 3 or v == sys.argv[2] else 1)
PYEOF
}

# 1. torch ---------------------------------------------------------------
if have torch; then
  log "torch $("$PY" -c 'import torch; print(torch.__version__)') kept"
else
  log "installing torch 2.14.1 + torchvision 0.29.1"
  "${INSTALL[@]}" -q torch==2.14.1 torchvision==0.29.1
fi
if ! have torchvision; then
  TV=$("$PY" - <<'PYEOF'
import torch
v = torch.__version__.split('+')[0].split('.')
print(f'0.{int(v[1]) + 15}.*')
PYEOF
)
  log "installing torchvision==$TV to match torch"
  "${INSTALL[@]}" -q "torchvision==$TV"
fi

# build prerequisites of the mmcv sdist (pkg_resources lives in setuptools<70)
if ! "$PY" -c 'import pkg_resources, wheel' >/dev/null 2>&1 \
   || ! "$PY" - <<'PYEOF'
import setuptools, sys
sys.exit(int(setuptools.__version__.split('.')[0]) >= 70)
PYEOF
then
  log "installing build tools (setuptools<70, wheel, ninja)"
  "${INSTALL[@]}" -q 'setuptools<70' wheel ninja
fi
have ninja || "${INSTALL[@]}" -q ninja
have mmengine || { log "installing mmengine"; "${INSTALL[@]}" -q 'mmengine>=0.10.4'; }

# 2. mmcv with compiled ops --------------------------------------------------
mmcv_ok() {
  "$PY" -c "import mmcv, mmcv.ops; from mmcv.ops import nms; assert mmcv.__version__ == '$MMCV_VERSION'" >/dev/null 2>&1
}
if mmcv_ok; then
  log "mmcv $MMCV_VERSION with ops already installed"
else
  KEY=$("$PY" - <<'PYEOF'
import sys, torch
cuda = torch.version.cuda if torch.cuda.is_available() else 'cpu'
print(f'py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}-{cuda}')
PYEOF
)
  WHEELDIR="$CACHE/wheels/$KEY"
  mkdir -p "$WHEELDIR"
  WHL=$(ls "$WHEELDIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)
  if [[ -z "$WHL" ]]; then
    log "building mmcv $MMCV_VERSION with ops for $KEY (10-20 min on 2 cores)"
    BUILD=$(mktemp -d)
    "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation \
      -d "$BUILD" "mmcv==$MMCV_VERSION"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
    SRC="$BUILD/mmcv-$MMCV_VERSION"
    if "$PY" - <<'PYEOF'
import sys, torch
v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2])
sys.exit(0 if v >= (2, 14) else 1)
PYEOF
    then
      sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
    fi
    (cd "$SRC" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "${PIP[@]}" wheel -q --no-deps --no-build-isolation --no-cache-dir \
      -w "$BUILD/dist" .)
    cp "$BUILD"/dist/mmcv-*.whl "$WHEELDIR/.tmp.whl"
    WHL="$WHEELDIR/$(basename "$BUILD"/dist/mmcv-*.whl)"
    mv "$WHEELDIR/.tmp.whl" "$WHL"   # atomic: a killed build leaves no wheel
    rm -rf "$BUILD"
  else
    log "reusing cached mmcv wheel $WHL"
  fi
  "${INSTALL[@]}" -q --no-deps --force-reinstall "$WHL"
  "${INSTALL[@]}" -q 'addict' 'packaging' 'pyyaml' 'yapf' 'opencv-python>=3' 'Pillow'
  mmcv_ok || { log "mmcv import check failed"; exit 1; }
fi

# 3. OpenMMLab task libraries and the rest --------------------------------
REQS=(mmdet==3.3.0 mmsegmentation==1.2.2 mmpretrain==1.2.0
      pytorch-quantization==2.1.3)
MISSING=()
for r in "${REQS[@]}"; do have "${r%%==*}" "${r##*==}" || MISSING+=("$r"); done
if ((${#MISSING[@]})); then
  log "installing ${MISSING[*]}"
  # mmcv is already satisfied; pip must not try to replace it.
  "${INSTALL[@]}" -q "${MISSING[@]}" "mmcv==$MMCV_VERSION" \
    --no-build-isolation
fi
if ! "$PY" -c 'import ftfy, regex, onnx, onnxruntime, pycocotools, pytest, ruff, matplotlib, prettytable' >/dev/null 2>&1; then
  log "installing runtime/test extras"
  "${INSTALL[@]}" -q -r "$ROOT/requirements/runtime.txt" \
    -r "$ROOT/requirements/optional.txt" -r "$ROOT/requirements/tests.txt"
fi

# 4. this package, editable ---------------------------------------------------
if ! (cd / && "$PY" -c "import gpusq_mm, os, sys; sys.exit(os.path.dirname(os.path.dirname(gpusq_mm.__file__)) != '$ROOT')" >/dev/null 2>&1); then
  log "installing gpusq_mm (editable)"
  "${INSTALL[@]}" -q --no-deps --no-build-isolation -e "$ROOT"
fi
log "done: $("$PY" -c 'import torch, mmcv, mmdet, mmseg, mmpretrain, mmengine; print("torch", torch.__version__, "mmengine", mmengine.__version__, "mmcv", mmcv.__version__, "mmdet", mmdet.__version__, "mmseg", mmseg.__version__, "mmpretrain", mmpretrain.__version__)')"
