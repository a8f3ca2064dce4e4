#!/usr/bin/env bash
# The demo: sets up the environment, then turns the bundled HSMM myoblast time course into
# stage-1 training data (gene medians -> vocabulary -> rank-value-encoded MDS shards) and
# summarises what was written. Usage: bash scripts/demo.sh [OUTPUT_DIR]   (default: demo-output)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
OUT="${1:-demo-output}"
MAXTOKI=".venv/bin/maxtoki"
HSMM="maxtoki/datasets/hsmm_myoblast_timecourse.h5ad"
mkdir -p "$OUT"

echo "== 1/3 gene medians (median of each gene's non-zero normalized expression)"
"$MAXTOKI" data medians "$HSMM" --allow-non-integer --min-expression 0.1 --out "$OUT/medians.json"

echo "== 2/3 vocabulary (specials, genes with a median, time tokens -1500..1499, <boq>, <eoq>)"
"$MAXTOKI" data vocab --medians "$OUT/medians.json" --out "$OUT/vocab.json"

echo "== 3/3 rank value encoding -> MDS shards"
"$MAXTOKI" data tokenize --config configs/data/hsmm_myoblast.yaml \
    --vocab "$OUT/vocab.json" --medians "$OUT/medians.json" --out "$OUT/cells" --overwrite

echo "== summary"
"$MAXTOKI" data inspect "$OUT/cells"
cat <<MSG

What was written:
  $OUT/medians.json   gene -> median normalized expression, the per-gene scale of rank value encoding
  $OUT/vocab.json     token dictionary in the released MaxToki layout
  $OUT/cells/         MDS shards (one cell per sample: genes ranked by scaled expression) with
                      manifest.json accounting for every input cell; read them with
                      streaming.StreamingDataset(local="$OUT/cells")
MSG
