#!/usr/bin/env bash
# Records sample_runs/ with the embedded default model and demo data. Every run is what these
# commands write; nothing is edited by hand. Run from the repository root after
# `cargo build --release`. Prints each command's wall time.
set -euo pipefail
L=${LDVIZ:-./target/release/ldviz}
S=sample_runs
SFT_MODEL=${SFT_MODEL:-target/sample_sft_model}   # intermediate SFT weights (not committed)
mkdir -p "$S"

# shared recipe (see sample_runs/README.md)
SFT="--optimizer adamw --lr ${SFT_LR:-1e-3} --epochs ${SFT_EPOCHS:-2} --batch-size 4 --eval-every ${SFT_EVAL:-32}"
DPO="--optimizer adamw --lr ${DPO_LR:-1e-4} --beta ${BETA:-0.1} --epochs ${DPO_EPOCHS:-4} --batch-size 4 --eval-every ${DPO_EVAL:-64}"

t() { local s=$(date +%s.%N); "$@"; local e=$(date +%s.%N); printf '%8.1f s  %s\n' "$(echo "$e - $s" | bc)" "$*" >&2; }

t $L train --quiet --algo sft $SFT --save-model "$SFT_MODEL" --out $S/sft.jsonl
t $L train --quiet --model "$SFT_MODEL" --algo dpo $DPO --out $S/dpo_offpolicy.jsonl
t $L train --quiet --algo extended --sft-lr ${SFT_LR:-1e-3} --sft-epochs ${SFT_EPOCHS:-2} $DPO --out $S/extended_then_dpo.jsonl
t $L train --quiet --model "$SFT_MODEL" --algo dpo --on-policy $DPO --out $S/dpo_onpolicy.jsonl
