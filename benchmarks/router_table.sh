#!/usr/bin/env bash
# Train the experts of the router table and write benchmarks/results/router_table.{json,md}.
#
# Step 1 trains the experts that have real training queries (recipes distill+labels and
# distill, 4 epochs each). Step 2 trains the pseudo-query experts of EXPERT_PLAN in
# expertrag/eval/router_table.py (1,000 random-sentence pseudo-queries each, recipe distill)
# and the multitask expert (3 epochs per recipe), then scores every dataset. Every expert
# learns from the BM25 + base-encoder hybrid teacher (expertrag/retrievers/experts/teacher.py).
# Experts that already exist in the experts folder, or were rejected before, are not trained
# again. Wall time on 2 shared CPU cores is printed in the table's expert section.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${EXPERTRAG_DATA_DIR:-$ROOT/../shared/data}"
EXPERTS="${EXPERTS_DIR:-$ROOT/.router_experts}"
PYTHON="${PYTHON:-python}"
export HF_HUB_OFFLINE=1

for spec in scifact:train nfcorpus:dev hotpotqa:train musique:train; do
    name="${spec%%:*}"
    split="${spec##*:}"
    if [ -d "$EXPERTS/$name" ]; then
        continue
    fi
    # A rejected expert exits with code 2 and is recorded in $EXPERTS/_rejections.json.
    "$PYTHON" -m expertrag.cli_experts train "$name" --data "$DATA/$name" --split "$split" \
        --experts-dir "$EXPERTS" --epochs 4 --json || [ $? -eq 2 ]
done

"$PYTHON" -m expertrag.eval.router_table --experts-dir "$EXPERTS" --train-missing --pseudo-method sentence \
    --max-pseudo-queries 1000 --epochs 3 --regenerate "bash benchmarks/router_table.sh" \
    --datasets scifact nfcorpus climate_fever mtrag_clapnq mtrag_cloud mtrag_govt cranfield cisi medline cacm \
    npl lisa adi hotpotqa musique
