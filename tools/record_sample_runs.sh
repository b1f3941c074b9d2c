#!/usr/bin/env bash
# Records the sample runs with the embedded default model and demo data. Every run is what these
# commands write, then gzipped (`gzip -9 -n`: the next build embeds sample_runs/*.jsonl.gz in the
# binary); nothing is edited by hand. Run from the repository root after `cargo build --release`.
# Prints each command's wall time.
#
#   bash tools/record_sample_runs.sh [--seed N] [--out-dir DIR]
#
# --seed N      seed of every run's batch order and sampling (default 0, the shipped runs)
# --out-dir DIR where the four runs go (default sample_runs)
#
# Then `python3 tools/check_findings.py DIR` checks the findings sample_runs/README.md reports.
set -euo pipefail
L=${LDVIZ:-./target/release/ldviz}
SEED=0
S=sample_runs
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) SEED="$2"; shift 2 ;;
    --out-dir) S="$2"; shift 2 ;;
    *) echo "unknown option $1 (use --seed N, --out-dir DIR)" >&2; exit 2 ;;
  esac
done
SFT_MODEL=${SFT_MODEL:-target/sample_sft_model_seed$SEED}   # intermediate SFT weights (not committed)
mkdir -p "$S"

# shared recipe (see sample_runs/README.md). Extended SFT trains on chosen and rejected, two
# sequences per record: it runs half the epochs of the plain SFT, so both see the same number of
# SFT sequences.
SFT_LR=${SFT_LR:-5e-4}
SFT_EPOCHS=${SFT_EPOCHS:-2}
EXT_EPOCHS=$(python3 -c "print($SFT_EPOCHS / 2)")
SFT="--optimizer adamw --lr $SFT_LR --epochs $SFT_EPOCHS --batch-size 4 --eval-every ${SFT_EVAL:-32} --seed $SEED"
DPO="--optimizer adamw --lr ${DPO_LR:-1e-4} --beta ${BETA:-0.1} --epochs ${DPO_EPOCHS:-4} --batch-size 4 --eval-every ${DPO_EVAL:-64} --seed $SEED"

t() { local s=$(date +%s.%N); "$@"; local e=$(date +%s.%N); printf '%8.1f s  %s\n' "$(echo "$e - $s" | bc)" "$*" >&2; }

t $L train --quiet --force --algo sft $SFT --save-model "$SFT_MODEL" --out "$S/sft.jsonl"
t $L train --quiet --force --model "$SFT_MODEL" --algo dpo $DPO --out "$S/dpo_offpolicy.jsonl"
t $L train --quiet --force --algo extended --sft-lr "$SFT_LR" --sft-epochs "$EXT_EPOCHS" $DPO --out "$S/extended_then_dpo.jsonl"
# on-policy: the batch's rejected responses are sampled from the policy before every update
t $L train --quiet --force --model "$SFT_MODEL" --algo dpo --on-policy --resample-every 1 $DPO --out "$S/dpo_onpolicy.jsonl"

# store them gzipped (ldviz reads .jsonl.gz run files; the build embeds these)
for r in sft dpo_offpolicy extended_then_dpo dpo_onpolicy; do
  gzip -9 -n -f "$S/$r.jsonl"
done
