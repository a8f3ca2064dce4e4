#!/usr/bin/env bash
# The demo: sets up the environment, then turns the bundled HSMM myoblast time course into
# training data: stage 1 (gene medians -> vocabulary -> rank-value-encoded MDS shards) and
# stage 2 (cell paragraphs with time-lapse tokens), and summarises what was written. Usage: bash scripts/demo.sh [OUTPUT_DIR]   (default: demo-output)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
OUT="${1:-demo-output}"
MAXTOKI=".venv/bin/maxtoki"
HSMM="maxtoki/datasets/hsmm_myoblast_timecourse.h5ad"
mkdir -p "$OUT"

echo "== 1/4 gene medians (median of each gene's non-zero normalized expression)"
"$MAXTOKI" data medians "$HSMM" --allow-non-integer --min-expression 0.1 --out "$OUT/medians.json"

echo "== 2/4 vocabulary (specials, genes with a median, time tokens -1500..1499, <boq>, <eoq>)"
"$MAXTOKI" data vocab --medians "$OUT/medians.json" --out "$OUT/vocab.json"

echo "== 3/4 rank value encoding -> MDS shards"
"$MAXTOKI" data tokenize --config configs/data/hsmm_myoblast.yaml \
    --vocab "$OUT/vocab.json" --medians "$OUT/medians.json" --out "$OUT/cells" --overwrite

echo "== 4/4 cell paragraphs (3-4 cells of the time course, time-lapse tokens in hours) -> MDS shards"
"$MAXTOKI" data paragraphs "$OUT/cells" --out "$OUT/paragraphs" --num-examples 500 --seed 0 --overwrite

echo "== summary"
"$MAXTOKI" data inspect "$OUT/cells"
"$MAXTOKI" data inspect "$OUT/paragraphs" --cells 2
cat <<MSG

What was written:
  $OUT/medians.json   gene -> median normalized expression, the per-gene scale of rank value encoding
  $OUT/vocab.json     token dictionary in the released MaxToki layout
  $OUT/cells/         MDS shards (one cell per sample: genes ranked by scaled expression) with
                      manifest.json accounting for every input cell; read them with
                      streaming.StreamingDataset(local="$OUT/cells")
  $OUT/paragraphs/    MDS shards of stage-2 examples: TimeBetweenCells (predict the hours between
                      cells) and NextCell (the cell expected after a given time), with
                      blueprint.npz to rebuild them exactly
MSG
