#!/usr/bin/env bash
# LESS's question at small scale: which 10% of a mixed pool (Alpaca + FLAN v2 chain-of-thought) teaches a
# model a reasoning task the pool does not hold verbatim? Target: one FLAN-CoT source (`flan_cot:strategyqa`
# by default; 25 selection examples, 50 validation, 200 held out), whose rows the comparison removes from the
# pool; metric: answer-only loss on the held-out rationales and answers.
#
#   examples/reasoning.sh                         # prints the dry run, then runs (resumes, reusing cached cells)
#   DRY_RUN=1 examples/reasoning.sh               # the dry run only
#   TARGET=flan_cot:aqua examples/reasoning.sh    # the other target (its own output folder)
#   SELECTORS=...,full examples/reasoning.sh      # a later sitting adds rows; list the earlier ones too
#   METRICS=loss,em OUT=... examples/reasoning.sh # also exact match of the generated chain of thought's answer
#                                                 # (greedy, slow: minutes a run); its own folder, as its
#                                                 # evaluations differ from the loss-only ones
#
# Run it alone on the machine. Pool: seeded samples of 300 bundled Alpaca and 300 FLAN-CoT examples (every
# source in proportion); k = 10% = 60; 3 training seeds (random and dsir draw again with each); the same 200
# held-out items for every row; the untrained model as the base row. Recipe: RECIPE (default small-k-validated:
# batch 8, 2 epochs) at LR, by default the target's own pick of 1e-4 and 2e-4 (the lower answer-only loss on its
# 50 validation items, never held-out ones): 2e-4 for strategyqa, 1e-4 for aqua (examples/results/reasoning-*/recipe.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1

TARGET=${TARGET:-flan_cot:strategyqa}
OUT=${OUT:-examples/results/reasoning-${TARGET##*:}}
# dsir:min_length=0 is DSIR without the authors' 100-token filter (what this folder first measured as dsir)
SELECTORS=${SELECTORS:-random,longest,less:store_features=true,less:scoring=faiss,bm25,dsir,dsir:min_length=0,embed,rds,ifd}
# every row is also paired against LESS exact, and against DSIR without its filter
VERSUS=${VERSUS:-less:store_features=true,dsir:min_length=0}
RECIPE=${RECIPE:-small-k-validated}
case "$TARGET" in
    flan_cot:aqua) VALIDATED_LR=1e-4 ;;
    *) VALIDATED_LR=2e-4 ;;  # strategyqa's; another target should pick its own on its validation items
esac
LR=${LR:-$VALIDATED_LR}

ARGS=(--pool alpaca:sample=300 --pool flan_cot:sample=300,stratify=source --target "$TARGET" --k 60
      --selectors "$SELECTORS" --seeds 3 --selection-seeds 1 --redraw random,dsir
      --metrics "${METRICS:-loss}" --recipe "$RECIPE" --lr "$LR" --versus "$VERSUS" --out "$OUT" ${EXTRA:-})

source examples/sitting.sh
run_sitting "$OUT" "${ARGS[@]}"
