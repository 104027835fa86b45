#!/usr/bin/env bash
# The demo chain on the embedded default data. Stages not built yet say so.
set -euo pipefail
BIN=${1:-.venv/bin}
"$BIN/edgenas" list ops
