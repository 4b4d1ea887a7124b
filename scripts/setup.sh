#!/usr/bin/env bash
# Install massive_mt into the active Python environment (a venv/conda env if one is active).
#   TORCH_SPEC   torch requirement installed first when no torch is importable (default torch==2.13.0;
#                an already installed torch, e.g. a CUDA build on a GPU node, is left alone)
#   PYTHON       interpreter to use (default: python3)
#   EXTRAS       pip extras of massive_mt to install (default: test)
#   WHEELHOUSE   install from this wheel directory (scripts/wheelhouse.sh) with the package index
#                disabled, for machines without one (docs/gpu.md "Offline install")
set -euo pipefail
if [ -n "${WHEELHOUSE:-}" ]; then
  [ -d "$WHEELHOUSE" ] || { echo "setup: WHEELHOUSE=$WHEELHOUSE is not a directory" >&2; exit 2; }
  WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
fi
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-test}
PIP=("$PYTHON" -m pip install --disable-pip-version-check --no-input)
[ "$(id -u)" = 0 ] && PIP+=(--root-user-action=ignore)
if [ -n "${WHEELHOUSE:-}" ]; then
  echo "setup: installing from $WHEELHOUSE, package index disabled"
  PIP+=(--no-index --find-links "$WHEELHOUSE")
fi

if "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "setup: using installed torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
else
  if [ -n "${WHEELHOUSE:-}" ] && ! compgen -G "$WHEELHOUSE/torch-*.whl" >/dev/null; then
    echo "setup: no torch is installed and $WHEELHOUSE has no torch wheel: install torch first, or" \
         "build the wheelhouse with scripts/wheelhouse.sh --with-torch" >&2
    exit 1
  fi
  echo "setup: installing $TORCH_SPEC"
  "${PIP[@]}" "$TORCH_SPEC"
fi
# the project and its pinned stack (deepspeed 0.19.8, transformers, sentencepiece, sacrebleu, mpi4py ...)
"${PIP[@]}" -e ".[${EXTRAS}]"
"$PYTHON" -c "import massive_mt, deepspeed, transformers, sentencepiece, sacrebleu; print('setup: massive_mt', massive_mt.__version__, 'deepspeed', deepspeed.__version__)"
