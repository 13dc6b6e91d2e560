#!/usr/bin/env bash
# The evidence: LESS against the baselines on real bundled data and two real targets, one command.
#
#   examples/evidence.sh             # prints the dry run, then runs (resumes if interrupted)
#   DRY_RUN=1 examples/evidence.sh   # the dry run only: estimated time per phase, writes nothing
#
# Run it alone on the machine. The pool is a seeded, committed recipe: 300 Alpaca examples and 300
# FLAN-CoT examples stratified over its 7 sources (offline, so Alpaca is the bundled sample);
# k = 10% of the pool; 3 training seeds, one LESS selection (one warmup and one datastore for
# every seed and both targets; random and DSIR draw again with each training seed); the same
# 200 held-out items per target for every row; the untrained model as the base row; the
# small-k training recipe (batch 8, lr 2e-4) for 2 epochs: its 4 took about 5 min a run on a
# 2-core CPU, 24 runs past the hour. LESS is two rows: projected features
# scored through FAISS, and the exact unprojected score.
# Results (tables, csv, json, plot) land in $OUT; training runs and selections stay git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1

OUT=${OUT:-examples/results/evidence}
# Rows in the order they run. The exact (unprojected) LESS row goes first and also stores the projected
# features, so the FAISS row reuses its warmup and datastores; the cheap baselines come before bm25 so a
# run cut short still holds the LESS rows and their baselines. dsir, rds, embed and ifd exist but do not fit
# in the one-hour CPU budget (6 training runs each): add them with SELECTORS=... on a bigger machine.
SELECTORS=${SELECTORS:-less:scoring=unprojected,store_features=true,random,longest,less:scoring=faiss,bm25}
# A warmup of 5% of 600 examples at LESS's batch of 32 is one step an epoch, and the first step runs at
# learning rate 0 (LESS's 3% linear warmup), so E epochs give E-1 scored checkpoints: 3 epochs give 2.
EPOCHS=${EPOCHS:-2}                # training epochs per selection (the small-k recipe's 4 on a bigger machine)
WARMUP_EPOCHS=${WARMUP_EPOCHS:-3}  # LESS's 4 give 3 checkpoints: the dry run says they do not fit in an hour

ARGS=(--pool alpaca:sample=300 --pool flan_cot:sample=300,stratify=source
      --target bbh --target mmlu --k 60
      --selectors "$SELECTORS" --seeds 3 --selection-seeds 1 --redraw random,dsir
      --metrics loss,accuracy --limit 200 --recipe small-k --epochs "$EPOCHS"
      --warmup-epochs "$WARMUP_EPOCHS" --out "$OUT")

source examples/sitting.sh
run_sitting "$OUT" "${ARGS[@]}"
