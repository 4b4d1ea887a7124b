#!/usr/bin/env bash
# The main job on the embedded default: build the software-localisation corpus, train a small
# multilingual model with DeepSpeed ZeRO-2 and sharded GradVac on 2 local ranks (CPU unless a GPU
# is present), evaluate it, print the per-language table and write the language-similarity heatmap.
# Extra arguments go to `massive-mt demo` (e.g. `--method plain`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m massive_mt.cli demo "$@"
