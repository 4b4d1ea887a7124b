#!/usr/bin/env bash
# Install everything the tests need, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
exec "$PYTHON" -m pytest "$@"
