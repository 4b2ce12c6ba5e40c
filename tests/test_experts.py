"""Tests of query-side experts and the router on two generated toy domains.

Each toy domain has 150 one-sentence documents built from four slots (an animal or a
vehicle and three attributes). Its queries keep the first slot and replace the three
attribute words by fixed made-up words of that domain, so the base encoder cannot match
them while a small adapter learns the substitution from the training queries. The
queries of the first 30 documents of each domain are held out of training.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from expertrag.errors import CorpusFormatError, InputError
from expertrag.records import Document
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts import (
    BASE_EXPERT,
    ExpertEncoders,
    ExpertRegistry,
    ExpertRejectedError,
    Recipe,
    RouterRetriever,
    TrainedExpert,
    TrainingConfig,
    TrainingData,
    load_beir_training_data,
    parse_strategy,
    pseudo_query,
    pseudo_query_training_data,
    train_expert,
    vector_index_search,
)
from expertrag.retrievers.experts.adapter import encode_with
from expertrag.retrievers.experts.data import collection_training_data, document_text, inverse_cloze_pair
from expertrag.retrievers.vector_index import VectorIndex

DOMAINS = {
    "animals": ("The {0} is {1}, lives near the {2} and eats {3}.",
                [["fox", "bear", "owl", "wolf", "deer", "frog", "hawk", "seal"],
                 ["red", "brown", "grey", "white", "black", "green"],
                 ["forest", "river", "desert", "mountain", "ocean", "swamp"],
                 ["insects", "fish", "berries", "seeds", "meat", "grass"]]),
    "vehicles": ("This {0} runs on {1}, carries {2} and was built in {3}.",
                 [["truck", "tram", "ferry", "glider", "tractor", "scooter", "barge", "van"],
                  ["diesel", "batteries", "steam", "hydrogen", "petrol", "sails"],
                  ["passengers", "timber", "coal", "mail", "cattle", "grain"],
                  ["Finland", "Brazil", "Japan", "Kenya", "Canada", "Spain"]]),
}
HELD_OUT = 30
TOY_CONFIG = TrainingConfig(epochs=4, batch_size=16, recipes=(Recipe("in-batch", learning_rate=1e-3),))


def made_up_word(domain: str, word: str) -> str:
    """Return a fixed three-syllable made-up word standing for ``word`` in ``domain``."""
    rng = random.Random(f"{domain}:{word}")
    return "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3))


def toy_documents(domain: str, count: int = 150) -> list[tuple[str, str, str]]:
    """Return (document id, document text, query text) triples of a toy domain."""
    template, slots = DOMAINS[domain]
    combinations = list(itertools.product(*slots))
    random.Random(0).shuffle(combinations)
    triples = []
    for index, combination in enumerate(combinations[:count]):
        query = " ".join([combination[0], *(made_up_word(domain, word) for word in combination[1:])])
        triples.append((f"{domain}-{index}", template.format(*combination), query))
    return triples


def toy_data(domain: str, encoder: Encoder) -> TrainingData:
    """All queries and documents of a toy domain as training data."""
    triples = toy_documents(domain)
    ids = [doc_id for doc_id, _, _ in triples]
    return TrainingData(domain, ids, ids, encoder.encode([text for _, text, _ in triples]),
                        {f"q-{doc_id}": query for doc_id, _, query in triples},
                        {f"q-{doc_id}": {doc_id: 1} for doc_id, _, _ in triples}, {"kind": "toy"})


def held_out_ids(data: TrainingData) -> list[str]:
    return [f"q-{data.name}-{index}" for index in range(HELD_OUT)]


def mean_ndcg(data: TrainingData, query_ids: list[str], vectors: np.ndarray) -> float:
    return float(np.mean(list(data.ndcg_per_query(vectors, query_ids).values())))


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.shared()


@pytest.fixture(scope="module")
def domains(encoder: Encoder) -> dict[str, TrainingData]:
    return {name: toy_data(name, encoder) for name in DOMAINS}


@pytest.fixture(scope="module")
def trained(domains: dict[str, TrainingData], encoder: Encoder) -> dict[str, TrainedExpert]:
    """One expert per toy domain, trained without the held-out queries."""
    experts = {}
    for name, data in domains.items():
        held_out = set(held_out_ids(data))
        experts[name] = train_expert(name, data.subset([q for q in sorted(data.qrels) if q not in held_out]), encoder, TOY_CONFIG)
    return experts


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory: pytest.TempPathFactory, trained: dict[str, TrainedExpert]) -> Path:
    """An experts folder holding both toy experts; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("experts") / "experts"
    registry = ExpertRegistry(root)
    for expert in trained.values():
        registry.add(expert)
    return root


@pytest.fixture()
def registry_copy(registry_root: Path, tmp_path: Path) -> ExpertRegistry:
    copy = tmp_path / "experts"
    shutil.copytree(registry_root, copy)
    return ExpertRegistry(copy)


@pytest.fixture(autouse=True)
def restore_package_logger() -> Iterator[None]:
    """Undo ``configure_logging``, which CLI commands call, so later tests keep their log capture."""
    package_logger = logging.getLogger("expertrag")
    saved = (package_logger.handlers[:], package_logger.level, package_logger.propagate)
    yield
    package_logger.handlers[:], package_logger.level, package_logger.propagate = saved


# Training


def test_training_improves_held_out_queries(domains, trained, encoder):
    for name, data in domains.items():
        query_ids = held_out_ids(data)
        texts = [data.queries[q] for q in query_ids]
        encoders = ExpertEncoders(encoder)
        encoders.add(name, trained[name].weights)
        base = mean_ndcg(data, query_ids, encoder.encode(texts))
        expert = mean_ndcg(data, query_ids, encoders.encode(texts, name))
        assert expert > base + 0.2, f"{name}: held-out nDCG@10 {expert:.3f} vs base {base:.3f}"


def test_training_reports_validation_gain(trained):
    for name, expert in trained.items():
        validation = expert.metrics["validation_ndcg@10"]
        assert validation["expert"] > validation["base"], name
        assert expert.metrics["chosen_recipe"] == "in-batch"
        assert 1 <= expert.metrics["chosen_epochs"] <= TOY_CONFIG.epochs
        assert expert.kind == "domain"


def test_training_is_deterministic(domains, encoder):
    data = domains["animals"].subset(sorted(domains["animals"].qrels)[:48])
    config = TrainingConfig(epochs=1, batch_size=16, recipes=(Recipe("in-batch", learning_rate=1e-3),), min_validation_gain=-1.0)
    first = train_expert("a", data, encoder, config)
    second = train_expert("a", data, encoder, config)
    assert first.weights.fingerprint() == second.weights.fingerprint()
    assert first.data_hash == second.data_hash


def test_training_rejects_expert_without_gain(domains, encoder):
    data = domains["vehicles"].subset(sorted(domains["vehicles"].qrels)[:48])
    config = TrainingConfig(epochs=1, batch_size=16, recipes=(Recipe("in-batch", learning_rate=1e-3),), min_validation_gain=5.0)
    with pytest.raises(ExpertRejectedError, match="does not beat the base encoder") as caught:
        train_expert("vehicles", data, encoder, config)
    assert "validation_ndcg@10" in caught.value.report


def test_multitask_expert_trains_on_all_domains(domains, encoder):
    subsets = [d.subset(sorted(d.qrels)[:48]) for d in domains.values()]
    config = TrainingConfig(epochs=1, batch_size=16, recipes=(Recipe("in-batch", learning_rate=1e-3),), min_validation_gain=-1.0)
    expert = train_expert("multitask", subsets, encoder, config)
    assert expert.kind == "multitask"
    assert set(expert.metrics["validation_by_domain"]) == set(DOMAINS)


# Adapters


def test_switching_adapters_keeps_base_outputs(trained, encoder):
    texts = ["fox lives near the river", "tram built in Japan", "vitamin D and bone fractures"]
    before = encoder.encode(texts)
    encoders = ExpertEncoders(encoder)
    for name, expert in trained.items():
        encoders.add(name, expert.weights)
    animals = encoders.encode(texts, "animals")
    vehicles = encoders.encode(texts, "vehicles")
    after = encoders.encode(texts, BASE_EXPERT)
    assert np.array_equal(before, after)
    assert np.array_equal(before, encoder.encode(texts))
    assert not np.allclose(animals, before, atol=1e-3)
    assert not np.allclose(animals, vehicles, atol=1e-3)


def test_merged_expert_shares_unchanged_tensors(trained, encoder):
    encoders = ExpertEncoders(encoder)
    encoders.add("animals", trained["animals"].weights)
    merged = encoders._models["animals"][0].auto_model
    base = encoder.model[0].auto_model
    assert merged.embeddings.word_embeddings.weight.data_ptr() == base.embeddings.word_embeddings.weight.data_ptr()
    assert merged.encoder.layer[0].attention.self.query.weight.data_ptr() != base.encoder.layer[0].attention.self.query.weight.data_ptr()


def test_saved_adapter_loads_in_peft(registry_root, trained, encoder):
    import copy

    from peft import PeftModel

    texts = ["owl kazuvo rotepa nisudi", "barge fimabe tolusu gepiva"]
    model = copy.deepcopy(encoder.model)
    model[0].auto_model = PeftModel.from_pretrained(model[0].auto_model, str(registry_root / "animals"))
    encoders = ExpertEncoders(encoder)
    encoders.add("animals", trained["animals"].weights)
    assert np.allclose(encode_with(model, texts, 8), encoders.encode(texts, "animals"), atol=1e-5)


# Registry


def test_expert_survives_save_and_reload(registry_root, trained, encoder):
    registry = ExpertRegistry(registry_root)
    assert [info.name for info in registry.list()] == sorted(trained)
    texts = ["deer pomasi kedube rovasa"]
    for name, expert in trained.items():
        info = registry.get(name)
        assert info.metadata["data_sha256"] == expert.data_hash
        assert info.metadata["metrics"]["validation_ndcg@10"] == expert.metrics["validation_ndcg@10"]
        assert info.metadata["training"]["recipes"][0]["learning_rate"] == 1e-3
        reloaded = registry.load_weights(name)
        assert reloaded.fingerprint() == expert.weights.fingerprint()
        original, restored = ExpertEncoders(encoder), ExpertEncoders(encoder)
        original.add(name, expert.weights)
        restored.add(name, reloaded)
        assert np.array_equal(original.encode(texts, name), restored.encode(texts, name))
        domains = registry.load_domains(name)
        assert len(domains) == 1
        assert len(domains[0].qrels) == len(expert.training[0].qrels) + len(expert.validation[0].qrels)
        assert domains[0].unit_ids == expert.training[0].unit_ids


def test_registry_remove_leaves_other_experts(registry_copy):
    registry_copy.remove("vehicles")
    assert registry_copy.names() == ["animals"]
    assert registry_copy.load_weights("animals").factors


def test_registry_rejects_duplicate_and_invalid_names(registry_copy, trained):
    with pytest.raises(Exception, match="already exists"):
        registry_copy.add(trained["animals"])
    renamed = TrainedExpert("base", "domain", trained["animals"].weights, {}, {}, [], [])
    with pytest.raises(Exception, match="Invalid expert name"):
        registry_copy.add(renamed)


def test_registry_detects_changed_adapter(registry_copy, tmp_path):
    weights = registry_copy.load_weights("vehicles")
    name = next(iter(weights.factors))
    weights.factors[name] = (weights.factors[name][0] * 2, weights.factors[name][1])
    weights.save(registry_copy.root / "vehicles")
    with pytest.raises(Exception, match="does not match the sha256"):
        registry_copy.load_weights("vehicles")


# Router


def test_router_sends_each_domain_to_its_expert(registry_root, domains, encoder):
    # The base encoder is a routing candidate too: it may serve a few queries near its pilots.
    for representation in ("static", "base"):
        router = RouterRetriever(ExpertRegistry(registry_root), encoder, representation=representation)
        assert router.domain_experts == sorted(DOMAINS)
        for name, data in domains.items():
            texts = [data.queries[q] for q in held_out_ids(data)]
            decisions = router.route(texts)
            other_domain = [(text, d.expert) for text, d in zip(texts, decisions) if d.expert not in (name, BASE_EXPERT)]
            own = sum(d.expert == name for d in decisions)
            assert other_domain == [], f"{representation}: {name} queries sent to another domain's expert: {other_domain[:3]}"
            assert own >= 0.9 * len(texts), f"{representation}: {own} of {len(texts)} {name} queries routed to {name}"
            assert name in decisions[0].similarities


def test_router_centroid_strategy(registry_root, domains, encoder):
    router = RouterRetriever(ExpertRegistry(registry_root), encoder, strategy="centroid")
    for name, data in domains.items():
        decisions = router.route([data.queries[q] for q in held_out_ids(data)])
        assert {d.expert for d in decisions} == {name}
        assert set(decisions[0].similarities) == set(DOMAINS)


def test_router_encode_groups_by_expert(registry_root, domains, encoder):
    router = RouterRetriever(ExpertRegistry(registry_root), encoder)
    texts = [domains["animals"].queries["q-animals-0"], domains["vehicles"].queries["q-vehicles-0"],
             domains["animals"].queries["q-animals-1"]]
    vectors, decisions = router.encode(texts)
    assert len({d.expert for d in decisions}) >= 2
    for row, decision in enumerate(decisions):
        assert np.allclose(vectors[row], router.encoders.encode([texts[row]], decision.expert)[0], atol=1e-5)


def test_router_search_strategies(registry_root, domains, encoder):
    data = domains["animals"]
    index = VectorIndex.build(data.unit_vectors, data.unit_ids)
    router = RouterRetriever(ExpertRegistry(registry_root), encoder)
    texts = [data.queries[q] for q in held_out_ids(data)]
    found_at_1 = {}
    for strategy in ("pilot", "fusion", "fixed:vehicles", "fixed:base"):
        results = router.search(texts, vector_index_search(index), 5, strategy)
        assert [len(r.hits) for r in results] == [5] * len(texts), strategy
        found_at_1[strategy] = sum(r.hits[0][0] == f"animals-{i}" for i, r in enumerate(results))
    assert router.search(texts[:1], vector_index_search(index), 5, "fusion")[0].decision.expert == "fusion"
    assert found_at_1["pilot"] > found_at_1["fixed:base"] + 5, found_at_1


def test_router_rejects_oracle_and_unknown_strategies(registry_root, encoder):
    router = RouterRetriever(ExpertRegistry(registry_root), encoder)
    with pytest.raises(InputError, match="only in evaluation"):
        router.route(["fox"], "oracle")
    with pytest.raises(InputError, match="Unknown routing strategy"):
        router.route(["fox"], "nearest")


def test_router_falls_back_for_missing_fixed_or_multitask(registry_root, encoder, caplog):
    router = RouterRetriever(ExpertRegistry(registry_root), encoder)
    with caplog.at_level(logging.WARNING, logger="expertrag"):
        fixed = router.route(["fox"], "fixed:nothing")[0]
        multitask = router.route(["fox"], "multitask")[0]
    assert fixed.expert == BASE_EXPERT
    assert "not available" in fixed.reason
    assert multitask.expert == BASE_EXPERT
    assert "no multitask expert" in multitask.reason
    assert "falls back to the base encoder" in caplog.text


def test_router_skips_corrupt_and_missing_adapters(registry_copy, domains, encoder, caplog):
    (registry_copy.root / "vehicles" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    (registry_copy.root / "ghost").mkdir()
    with caplog.at_level(logging.WARNING, logger="expertrag"):
        router = RouterRetriever(registry_copy, encoder)
        decisions = router.route([domains["vehicles"].queries["q-vehicles-0"], domains["animals"].queries["q-animals-0"]])
        fixed = router.route(["tram"], "fixed:vehicles")[0]
    assert router.domain_experts == ["animals"]
    assert {d.expert for d in decisions} <= {"animals", BASE_EXPERT}
    assert fixed.expert == BASE_EXPERT
    assert "Routing skips expert 'vehicles'" in caplog.text
    assert "ghost" in caplog.text


def test_cli_list_reports_corrupt_adapter(registry_copy, caplog):
    from expertrag.cli_experts import experts_app

    (registry_copy.root / "vehicles" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    (registry_copy.root / "ghost").mkdir()
    with caplog.at_level(logging.WARNING, logger="expertrag"):
        result = CliRunner().invoke(experts_app, ["list", "--experts-dir", str(registry_copy.root), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert sorted(rows) == ["animals", "ghost", "vehicles"]
    assert rows["animals"]["error"] is None
    assert "vehicles" in rows["vehicles"]["error"]
    assert "expert.json is missing" in rows["ghost"]["error"]
    # the rows carry the errors, so no warning repeats them
    assert "Skipping expert" not in caplog.text


def test_unknown_strategy_error_omits_oracle():
    with pytest.raises(InputError) as raised:
        parse_strategy("nearest")
    assert "pilot" in str(raised.value)
    assert "oracle" not in str(raised.value)


def test_router_rebuilds_pilots_after_removal(registry_copy, encoder):
    router = RouterRetriever(registry_copy, encoder)
    assert router.library().centroid_experts == ["animals", "vehicles"]
    registry_copy.remove("vehicles")
    router.reload()
    library = router.library()
    assert set(library.pilot_experts) <= {"animals", BASE_EXPERT}
    assert library.centroid_experts == ["animals"]
    assert router.domain_experts == ["animals"]


# Bad input and pseudo-queries


def write_beir(folder: Path, documents: list[dict], queries: dict[str, str], qrels: list[tuple[str, str]], split: str = "train") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in documents), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()), encoding="utf-8")
    (folder / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, d in qrels]
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_training_data_rejects_empty_corpus(tmp_path, encoder):
    folder = write_beir(tmp_path / "empty", [], {"q1": "anything"}, [("q1", "d1")])
    with pytest.raises(CorpusFormatError, match="empty") as caught:
        load_beir_training_data(folder, "train", encoder)
    assert str(folder / "corpus.jsonl") in str(caught.value)

    textless = write_beir(tmp_path / "textless", [{"_id": "d1", "title": "", "text": ""}], {"q1": "anything"}, [("q1", "d1")])
    with pytest.raises(InputError, match="No documents") as caught:
        load_beir_training_data(textless, "train", encoder)
    assert str(textless / "corpus.jsonl") in str(caught.value)


def test_training_data_rejects_unknown_documents(tmp_path, encoder):
    documents = [{"_id": "d1", "title": "", "text": "Owls hunt at night."}, {"_id": "d2", "title": "", "text": "Trams run on rails."}]
    folder = write_beir(tmp_path / "unknown", documents, {"q1": "owl", "q2": "tram"},
                        [("q1", "d1"), ("q1", "d9"), ("q2", "d10")])
    with pytest.raises(InputError) as caught:
        load_beir_training_data(folder, "train", encoder)
    message = str(caught.value)
    assert str(folder / "qrels" / "train.tsv") in message
    assert "d10" in message
    assert "d9" in message
    assert "2 documents" in message


def test_training_data_rejects_unknown_queries(tmp_path, encoder):
    documents = [{"_id": "d1", "title": "", "text": "Owls hunt at night."}]
    folder = write_beir(tmp_path / "queries", documents, {"q1": "owl"}, [("q1", "d1"), ("q7", "d1")])
    with pytest.raises(InputError, match="q7"):
        load_beir_training_data(folder, "train", encoder)


def test_collection_training_data_checks_collection(encoder):
    chunks = {f"c{i}": SimpleNamespace(doc_id=f"d{i}", position=0, title=f"Title number {i} here",
                                       text=f"Title number {i} here\n\nBody sentence {i} has words. More.")
              for i in range(3)}
    store = SimpleNamespace(chunk_vectors=lambda collection: (sorted(chunks), np.eye(3, 4, dtype=np.float32)),
                            get_chunks=lambda ids: {i: chunks[i] for i in ids})
    data = collection_training_data(store, "toy", method="title")
    assert sorted(data.queries.values()) == [f"Title number {i} here" for i in range(3)]
    assert data.unit_documents == ["d0", "d1", "d2"]

    empty = SimpleNamespace(chunk_vectors=lambda collection: ([], np.zeros((0, 0), dtype=np.float32)))
    with pytest.raises(InputError, match="contains no documents"):
        collection_training_data(empty, "nothing")


def test_pseudo_queries():
    titled = Document(doc_id="1", title="Wing flutter at high speed", text="Wing flutter at high speed\n\nWe measured flutter in a tunnel. Then more.")
    untitled = Document(doc_id="2", text="statin breast cancer survival nationwide cohort study finland abstract recent " * 4)
    short = Document(doc_id="3", text="Too short.")
    assert pseudo_query(titled, "title") == "Wing flutter at high speed"
    assert pseudo_query(titled, "first-sentence") == "We measured flutter in a tunnel."
    assert pseudo_query(titled, "auto") == "Wing flutter at high speed"
    assert pseudo_query(untitled, "title") is None
    assert pseudo_query(untitled, "auto") == " ".join(untitled.text.split()[:16])
    assert pseudo_query(short, "first-sentence") is None
    with pytest.raises(InputError, match="Unknown pseudo-query method"):
        pseudo_query(titled, "summary")  # type: ignore[arg-type]


def test_inverse_cloze_pairs():
    document = Document(doc_id="1", title="Wing flutter", text="Wing flutter\n\nWe built a model wing. "
                        "The wing fluttered at high speed in the tunnel. Damping removed the flutter entirely.")
    query, rest = inverse_cloze_pair(document, np.random.default_rng(0))
    assert query in document.text
    assert query not in rest
    assert rest.startswith("Wing flutter ")
    assert len(rest.split()) + len(query.split()) == len(document_text(document).split())
    assert inverse_cloze_pair(Document(doc_id="2", text="One short sentence."), np.random.default_rng(0)) is None


def test_inverse_cloze_training_data_replaces_vectors(tmp_path, encoder):
    documents = [Document(doc_id=str(i), text=f"Topic {i} starts here with words. It goes on for a while now. "
                          f"It ends with number {i} at last.") for i in range(4)]
    data = pseudo_query_training_data("ict", documents, encoder, "ict", max_queries=2, seed=0, cache_dir=tmp_path)
    full = encoder.encode([document_text(d) for d in documents])
    changed = [row for row in range(4) if not np.allclose(data.unit_vectors[row], full[row], atol=1e-5)]
    assert len(data.qrels) == 2
    assert sorted(changed) == sorted(int(q.split(":")[1]) for q in data.qrels)


# Command line


def test_cli_train_list_show_route_remove(tmp_path, domains, monkeypatch):
    from expertrag.cli_experts import experts_app

    monkeypatch.setenv("EXPERTRAG_CACHE_DIR", str(tmp_path / "cache"))

    data = domains["animals"]
    triples = toy_documents("animals")
    folder = write_beir(tmp_path / "animals", [{"_id": d, "title": "", "text": t} for d, t, _ in triples],
                        {f"q-{d}": q for d, _, q in triples}, [(f"q-{d}", d) for d, _, _ in triples[HELD_OUT:]])
    root = tmp_path / "experts"
    runner = CliRunner()

    result = runner.invoke(experts_app, ["train", "--data", str(folder), "--experts-dir", str(root), "--epochs", "2",
                                         "--batch-size", "16", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["name"] == "animals"
    assert summary["validation_expert"] > summary["validation_base"]

    listed = json.loads(runner.invoke(experts_app, ["list", "--experts-dir", str(root), "--json"]).stdout)
    assert [row["name"] for row in listed] == ["animals"]

    metadata = json.loads(runner.invoke(experts_app, ["show", "animals", "--experts-dir", str(root)]).stdout)
    assert metadata["domains"][0]["source"]["kind"] == "qrels"
    assert len(metadata["data_sha256"]) == 64

    again = runner.invoke(experts_app, ["train", "--data", str(folder), "--experts-dir", str(root)])
    assert again.exit_code == 2
    assert "already exists" in again.output

    routed = runner.invoke(experts_app, ["route", data.queries["q-animals-0"], "--experts-dir", str(root)])
    assert routed.exit_code == 0, routed.output
    assert json.loads(routed.stdout)[0]["expert"] in ("animals", BASE_EXPERT)

    removed = runner.invoke(experts_app, ["remove", "animals", "--experts-dir", str(root)])
    assert removed.exit_code == 0
    missing = runner.invoke(experts_app, ["show", "animals", "--experts-dir", str(root)])
    assert missing.exit_code == 2
    assert "not found" in missing.output

    rejected = runner.invoke(experts_app, ["train", "--data", str(folder), "--experts-dir", str(root), "--epochs", "1",
                                           "--batch-size", "16", "--min-gain", "5"])
    assert rejected.exit_code == 2
    assert "was not registered" in rejected.output
    assert "animals" not in ExpertRegistry(root).names()
    assert "validation_ndcg@10" in ExpertRegistry(root).rejections()["animals"]


# Evaluation table


def test_router_table_on_toy_datasets(tmp_path, registry_copy, encoder):
    from expertrag.eval.router_table import build_table, write_table
    from expertrag.settings import Settings

    for domain in DOMAINS:
        triples = toy_documents(domain)
        folder = write_beir(tmp_path / "data" / domain, [{"_id": d, "title": "", "text": t} for d, t, _ in triples],
                            {f"q-{d}": q for d, _, q in triples}, [(f"q-{d}", d) for d, _, _ in triples[:HELD_OUT]], "test")
        assert (folder / "qrels" / "test.tsv").is_file()
    settings = Settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")

    table = build_table(list(DOMAINS), registry_copy, settings, encoder)
    assert [row["dataset"] for row in table["rows"]] == list(DOMAINS)
    for column in ("bm25", BASE_EXPERT, "animals", "vehicles", "pilot", "pilot (base repr.)", "centroid", "fusion", "oracle"):
        assert column in table["mean"], column
    assert table["mean"]["pilot"] > table["mean"][BASE_EXPERT] + 0.2
    for row in table["rows"]:
        scores = row["ndcg@10"]
        assert scores["oracle"] == max(scores[c] for c in (BASE_EXPERT, "animals", "vehicles"))
        assert row["oracle_expert"] == row["dataset"]
        assert sum(row["routing"]["pilot"].values()) == HELD_OUT

    json_path, markdown_path = write_table(table, tmp_path / "out", "toy", "python -m expertrag.eval.router_table --toy")
    assert json.loads(json_path.read_text())["command"].endswith("--toy")
    markdown = markdown_path.read_text()
    assert "| **mean** |" in markdown
    assert "python -m expertrag.eval.router_table --toy" in markdown
