#!/usr/bin/env bash
# `make demo`: the whole chain (profile -> prune -> search -> train -> export -> report) on
# Fashion-MNIST with the shipped demo config. DATA=<spec> points it at another dataset, e.g.
#   make demo DATA=imagefolder:../shared/data/cifar10-jpeg.tar.gz
set -euo pipefail
BIN=${1:-.venv/bin}
DATA=${DATA:-}
FMNIST=/usr/share/datasets/fashion-mnist

if [ -z "$DATA" ] && [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST is not installed; installing the Debian package dataset-fashion-mnist ..."
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1; }; then
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null \
      || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
      || true
  fi
  if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
    echo "error: could not install dataset-fashion-mnist (no apt-get or no permission)." >&2
    echo "Point the demo at another dataset, e.g.: make demo DATA=imagefolder:/path/to/cifar10-jpeg.tar.gz" >&2
    echo "or DATA=cifar10:/path/to/cifar-10-batches-py, or DATA=synthetic:2000 for a quick smoke run." >&2
    exit 2
  fi
fi

# another dataset gets its own run folder, so --resume never mixes two runs
OUT=${OUT:-runs/demo${DATA:+-$(printf '%s' "$DATA" | sed 's/[^A-Za-z0-9]/-/g' | cut -c1-40)}}
# --resume: running `make demo` again finishes an interrupted run or just reprints a finished one.
exec "$BIN/edgenas" run --config edgenas/configs/demo.toml --out "$OUT" --resume ${DATA:+--data "$DATA"}
