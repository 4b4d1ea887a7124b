#!/usr/bin/env bash
# Install everything the tests need, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
# the layers of the package (pyproject.toml [tool.importlinter], docs/architecture.md)
"$PYTHON" -c "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())" --no-cache
exec "$PYTHON" -m pytest "$@"
