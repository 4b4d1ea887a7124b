#!/usr/bin/env bash
# Run the test suite (docs/testing.md). Extra arguments go to pytest.
#   bash scripts/test.sh            install what the tests need (scripts/setup.sh), then the whole suite (CI)
#   bash scripts/test.sh --quick    the quick tier (pytest -m quick); installs nothing when this
#                                   checkout's massive_mt and the test dependencies already import
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
QUICK=0
if [ "${1:-}" = "--quick" ]; then
  QUICK=1
  shift
fi
set_up() {   # this checkout's package and what the tests import
  "$PYTHON" - <<'EOF' >/dev/null 2>&1
import pathlib, sys
import deepspeed, hypothesis, importlinter, pytest, sacrebleu, sentencepiece, transformers  # noqa: F401
import massive_mt
sys.exit(pathlib.Path(massive_mt.__file__).resolve().parents[1] != pathlib.Path.cwd().resolve())
EOF
}
if [ "$QUICK" = 1 ] && set_up; then
  echo "test.sh: the environment is set up; scripts/setup.sh skipped"
else
  bash scripts/setup.sh
fi
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
if [ "$QUICK" = 1 ]; then
  exec "$PYTHON" -m pytest -m quick "$@"
fi
exec "$PYTHON" -m pytest "$@"
