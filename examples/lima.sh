#!/usr/bin/env bash
# The LIMA question at small scale: which 10% of an Alpaca pool teaches a model to answer users' requests
# the way experts do? Target: Self-Instruct's user-oriented instructions (`user_oriented`: 36 selection
# examples, 36 validation, 180 held out); metric: answer-only loss on the experts' held-out responses.
#
#   examples/lima.sh             # prints the dry run, then runs (resumes, reusing every cached cell)
#   DRY_RUN=1 examples/lima.sh   # the dry run only
#   SELECTORS=less examples/lima.sh   # a later sitting: adds rows; the earlier cells are reused
#
# Run it alone on the machine. Pool: a seeded 1,000-example sample of the bundled Alpaca (offline);
# k = 10% = 100; 3 training seeds (random and dsir draw again with each); the same 180 held-out items for
# every row; the untrained model as the base row. Recipe: small-k (batch 8) for 2 epochs at the
# learning rate picked on the validation split (examples/results/lima/recipe.md), never on held-out items.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1

OUT=${OUT:-examples/results/lima}
SELECTORS=${SELECTORS:-random,longest}
VERSUS=${VERSUS:-}  # a row every other is paired against too (the published report: VERSUS=embed)

ARGS=(--pool alpaca:sample=1000 --target user_oriented --k 100
      --selectors "$SELECTORS" --seeds 3 --selection-seeds 1 --redraw random,dsir
      --metrics loss --recipe small-k-validated --out "$OUT" ${VERSUS:+--versus "$VERSUS"} ${EXTRA:-})

source examples/sitting.sh
run_sitting "$OUT" "${ARGS[@]}"
