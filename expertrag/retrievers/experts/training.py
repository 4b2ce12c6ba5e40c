"""Training of query-side LoRA experts against frozen document vectors.

Only queries pass through the encoder being trained. Documents keep the base encoder's
vectors, so one index serves every expert. An epoch visits every training query once.
A recipe's loss has up to two terms:

* labels: a softmax cross-entropy over scaled cosine similarities, where the query's
  relevant document (one drawn at random) competes with the other queries' documents in
  the batch (in-batch negatives), plus hard negatives sampled from the base ranking;
* teacher: the KL divergence from the hybrid teacher's softmax over the query's candidate
  units to the student's (:mod:`expertrag.retrievers.experts.teacher`).

Every recipe trains from the same seed. After each epoch the adapter is scored on a held-out
validation slice of the queries, and the best (recipe, epoch) wins. An expert that
does not beat the base encoder on validation raises :class:`ExpertRejectedError`.
"""

from __future__ import annotations

import copy
import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from expertrag.errors import InputError
from expertrag.retrievers.encoder import Encoder, pick_device
from expertrag.retrievers.experts.adapter import LoraSpec, LoraWeights, attach_lora, extract_lora
from expertrag.retrievers.experts.data import TrainingData
from expertrag.retrievers.experts.errors import ExpertRejectedError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
ExpertKind = Literal["domain", "multitask"]


@dataclass(frozen=True)
class Recipe:
    """One training setting tried on the validation slice.

    The loss is ``label_weight`` × the in-batch cross-entropy on the qrels plus
    ``teacher_weight`` × the KL divergence to the teacher (which needs teacher targets in the
    data). ``hard_negatives`` documents per training pair are drawn each step from the base
    encoder's ranks ``hard_negative_ranks[0]`` to ``hard_negative_ranks[1] - 1`` (0 = best),
    skipping the query's relevant documents. Skipping the top ranks keeps unjudged relevant
    documents out of the negatives.
    """

    name: str
    learning_rate: float = 2e-4
    hard_negatives: int = 0
    hard_negative_ranks: tuple[int, int] = (20, 100)
    label_weight: float = 1.0
    teacher_weight: float = 0.0


RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    Recipe("distill+labels", learning_rate=3e-4, label_weight=1.0, teacher_weight=1.0),
    Recipe("distill", learning_rate=3e-4, label_weight=0.0, teacher_weight=1.0),
    Recipe("in-batch", learning_rate=2e-4),
    Recipe("in-batch+hard", learning_rate=2e-4, hard_negatives=2, hard_negative_ranks=(20, 100)),
)}
"""Every named recipe. The ``in-batch`` pair was the default before the teacher; on the router
table its experts gained +0.67 nDCG@10 points over the base encoder (benchmarks/results)."""

DEFAULT_RECIPES: tuple[Recipe, ...] = (RECIPES["distill+labels"], RECIPES["distill"])
PSEUDO_RECIPES: tuple[Recipe, ...] = (RECIPES["distill"],)
"""For pseudo-queries the label is the teacher's own best document, so a labels term repeats
the teacher term at twice the training time."""


@dataclass
class TrainingConfig:
    """Settings of one expert training run; every run with the same config and data is repeatable."""

    lora: LoraSpec = field(default_factory=LoraSpec)
    recipes: tuple[Recipe, ...] | None = None
    """None picks by the data: :data:`PSEUDO_RECIPES` when every domain contains teacher-labeled
    pseudo-queries, :data:`DEFAULT_RECIPES` when every domain has teacher targets, else the
    in-batch pair."""
    epochs: int = 4
    batch_size: int = 32
    temperature: float = 0.05
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    validation_fraction: float = 0.2
    min_validation_queries: int = 1
    max_validation_queries: int = 300
    max_training_queries: int | None = 4000
    min_validation_gain: float = 0.005
    """nDCG@10 the expert must gain over the base encoder on validation; smaller gains are noise
    on a validation slice of a few hundred queries."""
    seed: int = 0
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict."""
        values = asdict(self)
        values["lora"] = self.lora.to_dict()
        values["recipes"] = [asdict(recipe) for recipe in self.recipes] if self.recipes is not None else None
        return values


def default_recipes(datasets: Sequence[TrainingData]) -> tuple[Recipe, ...]:
    """Return the recipes :class:`TrainingConfig` uses when it names none (see its ``recipes``)."""
    if not datasets or any(d.teacher is None for d in datasets):
        return (RECIPES["in-batch"], RECIPES["in-batch+hard"])
    if all(d.source.get("teacher", {}).get("labels") == "teacher" for d in datasets):
        return PSEUDO_RECIPES
    return DEFAULT_RECIPES


@dataclass
class TrainedExpert:
    """An adapter that beat the base encoder on validation, with what is needed to register it."""

    name: str
    kind: ExpertKind
    weights: LoraWeights
    config: dict[str, Any]
    metrics: dict[str, Any]
    training: list[TrainingData] = field(repr=False)
    validation: list[TrainingData] = field(repr=False)

    @property
    def data_hash(self) -> str:
        """sha256 over the content hashes of every domain's training and validation data."""
        import hashlib

        digest = hashlib.sha256()
        for data in (*self.training, *self.validation):
            digest.update(data.content_hash().encode())
        return digest.hexdigest()


@dataclass
class _Domain:
    """The tensors and index lists of one domain's training queries, prepared once."""

    data: TrainingData
    query_ids: list[str]
    targets: list[list[int]]
    relevant_rows: list[set[int]]
    ranked_rows: np.ndarray
    units: Any
    teacher_rows: Any = None
    teacher_scores: Any = None
    """(queries, candidates) tensors aligned with ``query_ids``, or None without a teacher."""


def train_expert(
    name: str,
    data: TrainingData | Sequence[TrainingData],
    encoder: Encoder,
    config: TrainingConfig | None = None,
    kind: ExpertKind | None = None,
    progress: ProgressCallback | None = None,
) -> TrainedExpert:
    """Train a query-side LoRA adapter on one domain (or, for a multitask expert, several).

    Args:
        name: expert name.
        data: the training data; several domains train one adapter on their union.
        encoder: the frozen base encoder; it is copied, never changed.
        config: training settings; by default the recipes that suit the data (:func:`default_recipes`), 4 epochs each.
        kind: ``domain`` or ``multitask``; by default ``multitask`` exactly when several domains are given.
        progress: called with (steps done, steps in all recipes) after every step.

    Returns:
        The best adapter by mean validation nDCG@10 over the domains, with its metrics.

    Raises:
        ExpertRejectedError: no recipe beat the base encoder on validation by more than
            ``config.min_validation_gain``. The error's ``report`` contains every score.
    """
    import torch

    config = config or TrainingConfig()
    datasets = [data] if isinstance(data, TrainingData) else list(data)
    kind = kind or ("multitask" if len(datasets) > 1 else "domain")
    device = pick_device(config.device or encoder.device)
    started = time.perf_counter()

    if config.recipes is None:
        config = replace(config, recipes=default_recipes(datasets))
    assert config.recipes is not None
    unlabeled = [d.name for d in datasets if d.teacher is None]
    if unlabeled and any(recipe.teacher_weight > 0 and recipe.label_weight == 0 for recipe in config.recipes):
        raise InputError(f"Recipe(s) {', '.join(r.name for r in config.recipes if r.label_weight == 0)} learn only "
                         f"from the teacher, but {', '.join(unlabeled)} has no teacher targets: load the data with "
                         "teacher=True or choose a recipe with labels (in-batch)")
    if unlabeled and any(recipe.teacher_weight > 0 for recipe in config.recipes):
        logger.warning("No teacher targets for %s: its queries train on their labels only", ", ".join(unlabeled))
    splits = [d.split(config.validation_fraction, config.seed, config.min_validation_queries) for d in datasets]
    training = [pair[0] for pair in splits]
    validation = [_cap_queries(pair[1], config.max_validation_queries, config.seed) for pair in splits]
    domains = [_prepare(d, encoder, config, device) for d in training]
    base_scores = [_validate(validation_set, lambda texts: encoder.encode(texts)) for validation_set in validation]
    base_mean = float(np.mean([s for s in base_scores]))
    logger.info("Training expert %r on %s: %d queries, %d validation queries, base validation nDCG@10 %.4f",
                name, ", ".join(d.name for d in datasets), sum(len(d.query_ids) for d in domains),
                sum(len(v.qrels) for v in validation), base_mean)

    steps_per_epoch = sum(-(-len(d.query_ids) // config.batch_size) for d in domains)
    total_steps = steps_per_epoch * config.epochs * len(config.recipes)
    done = 0
    best: tuple[float, str, int, LoraWeights, list[float]] | None = None
    history: dict[str, list[float]] = {}
    recipe_seconds: dict[str, float] = {}

    for recipe in config.recipes:
        recipe_started = time.perf_counter()
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        model = copy.deepcopy(encoder.model).to(device)
        attach_lora(model, config.lora)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=recipe.learning_rate, weight_decay=config.weight_decay)
        recipe_steps = steps_per_epoch * config.epochs
        warmup = max(1, int(config.warmup_fraction * recipe_steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step, warmup=warmup, total=recipe_steps: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup))))
        history[recipe.name] = []

        for epoch in range(1, config.epochs + 1):
            model.train()
            for domain, batch in _batches(domains, config.batch_size, rng):
                loss = _recipe_loss(model, domain, batch, recipe, config, rng, device)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                done += 1
                if progress:
                    progress(done, total_steps)
            model.eval()
            scores = [_validate(v, lambda texts, model=model: _encode_training_model(model, texts, config.batch_size))
                      for v in validation]
            mean = float(np.mean(scores))
            history[recipe.name].append(round(mean, 5))
            logger.info("Expert %r recipe %s epoch %d: validation nDCG@10 %.4f (base %.4f)",
                        name, recipe.name, epoch, mean, base_mean)
            if best is None or mean > best[0]:
                best = (mean, recipe.name, epoch, extract_lora(model, config.lora), scores)
        recipe_seconds[recipe.name] = round(time.perf_counter() - recipe_started, 1)
        # The PEFT-wrapped copy sits in reference cycles, so free it now rather than at the next
        # full collection: otherwise each recipe keeps one more model copy (about 90 MB) alive.
        del model, optimizer, scheduler, trainable
        gc.collect()

    assert best is not None
    best_mean, best_recipe, best_epoch, weights, best_scores = best
    seconds = time.perf_counter() - started
    metrics = {
        "validation_ndcg@10": {"base": round(base_mean, 5), "expert": round(best_mean, 5),
                               "gain": round(best_mean - base_mean, 5)},
        "validation_by_domain": {v.name: {"base": round(b, 5), "expert": round(e, 5), "queries": len(v.qrels)}
                                 for v, b, e in zip(validation, base_scores, best_scores)},
        "chosen_recipe": best_recipe,
        "chosen_epochs": best_epoch,
        "validation_history": history,
        "recipe_seconds": recipe_seconds,
        "training_queries": sum(len(d.query_ids) for d in domains),
        "training_pairs": sum(len(t) for d in domains for t in d.targets),
        "training_seconds": round(seconds, 1),
        "device": device,
    }
    logger.info("Expert %r: recipe %s, %d epochs, validation nDCG@10 %.4f vs base %.4f, %.0f s",
                name, best_recipe, best_epoch, best_mean, base_mean, seconds)
    if not best_mean > base_mean + config.min_validation_gain:
        hint = ("Train on real queries with qrels, or lower the minimum gain (--min-gain) to register it anyway.")
        if base_mean >= 0.99:
            hint = ("The base encoder already ranks nearly every validation query's relevant document first, "
                    "as it does for pseudo-queries on a small collection, so no expert can gain here. " + hint)
        raise ExpertRejectedError(
            f"Expert {name!r} was not registered: its best validation nDCG@10 {best_mean:.4f} "
            f"(recipe {best_recipe}, epoch {best_epoch}) does not beat the base encoder's {base_mean:.4f} "
            f"by more than {config.min_validation_gain}. {hint}", metrics)
    settings = {**config.to_dict(), "encoder": encoder.name}
    return TrainedExpert(name, kind, weights, settings, metrics, training, validation)


def _cap_queries(data: TrainingData, limit: int, seed: int) -> TrainingData:
    """Keep at most ``limit`` queries, chosen by a seeded shuffle, so validation stays fast."""
    if len(data.qrels) <= limit:
        return data
    query_ids = sorted(data.qrels)
    chosen = sorted(query_ids[i] for i in np.random.default_rng(seed).permutation(len(query_ids))[:limit])
    return data.subset(chosen)


def _prepare(data: TrainingData, encoder: Encoder, config: TrainingConfig, device: str) -> _Domain:
    """Find each query's target units (the best unit of each relevant document), its relevant units
    and the base ranking for hard negatives."""
    import torch

    query_ids = sorted(data.qrels)
    if config.max_training_queries is not None and len(query_ids) > config.max_training_queries:
        keep = np.random.default_rng(config.seed).permutation(len(query_ids))[: config.max_training_queries]
        query_ids = sorted(query_ids[i] for i in keep)
    base_vectors = encoder.encode([data.queries[q] for q in query_ids])
    scores = base_vectors @ data.unit_vectors.T
    depth = min(max(recipe.hard_negative_ranks[1] for recipe in config.recipes), scores.shape[1])
    ranked = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    ranked = np.take_along_axis(ranked, np.argsort(-np.take_along_axis(scores, ranked, axis=1), axis=1), axis=1)

    targets: list[list[int]] = []
    relevant_rows: list[set[int]] = []
    for position, query_id in enumerate(query_ids):
        rows: set[int] = set()
        query_targets = []
        for doc_id in sorted(data.qrels[query_id]):
            doc_rows = data.rows_of_document[doc_id]
            rows.update(doc_rows)
            query_targets.append(max(doc_rows, key=lambda row: scores[position, row]))
        targets.append(query_targets)
        relevant_rows.append(rows)
    units = torch.from_numpy(np.array(data.unit_vectors, dtype=np.float32, copy=True)).to(device)  # stored vectors may be read-only
    teacher_rows = teacher_scores = None
    if data.teacher is not None:
        missing = [q for q in query_ids if q not in data.teacher]
        if missing:
            raise InputError(f"{data.name}: {len(missing)} training queries have no teacher targets "
                             f"({', '.join(missing[:5])}); label the data again")
        targets_of = data.teacher.subset(query_ids)
        teacher_rows = torch.from_numpy(targets_of.rows).to(device)
        teacher_scores = torch.from_numpy(np.ascontiguousarray(targets_of.scores, dtype=np.float32)).to(device)
    return _Domain(data, query_ids, targets, relevant_rows, ranked, units, teacher_rows, teacher_scores)


def _batches(domains: list[_Domain], batch_size: int, rng: np.random.Generator):
    """Yield (domain, [(query position, target unit row)]) batches for one epoch.

    Each batch contains queries of one domain, each with one relevant document drawn at
    random, and the batches of all domains are shuffled together.
    """
    batches = []
    for domain in domains:
        order = rng.permutation(len(domain.query_ids))
        for first in range(0, len(order), batch_size):
            batch = []
            for position in order[first : first + batch_size]:
                choices = domain.targets[position]
                batch.append((int(position), choices[int(rng.integers(len(choices)))]))
            batches.append((domain, batch))
    for index in rng.permutation(len(batches)):
        yield batches[index]


def _recipe_loss(model: Any, domain: _Domain, batch: list[tuple[int, int]], recipe: Recipe,
                      config: TrainingConfig, rng: np.random.Generator, device: str) -> Any:
    """Return the recipe's weighted sum of the labels term and the teacher term for one batch."""
    texts = [domain.data.queries[domain.query_ids[position]] for position, _ in batch]
    preprocess = getattr(model, "preprocess", None) or model.tokenize
    features = preprocess(texts)
    features = {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}
    queries = model(features)["sentence_embedding"]
    loss = None
    if recipe.label_weight > 0:
        loss = recipe.label_weight * _labels_loss(queries, domain, batch, recipe, config, rng)
    if recipe.teacher_weight > 0 and domain.teacher_rows is not None:
        term = recipe.teacher_weight * _teacher_loss(queries, domain, batch, recipe, config)
        loss = term if loss is None else loss + term
    if loss is None:
        raise InputError(f"Recipe {recipe.name!r} has no loss term for {domain.data.name}: it needs teacher targets")
    return loss


def _labels_loss(queries: Any, domain: _Domain, batch: list[tuple[int, int]], recipe: Recipe,
                 config: TrainingConfig, rng: np.random.Generator) -> Any:
    """Cross-entropy of each pair's target among the batch's targets and the sampled hard negatives.

    Columns that are relevant to a row's query, other than its own target, are masked out,
    so another relevant document never counts as a negative.
    """
    import torch

    columns: list[int] = list(dict.fromkeys(target for _, target in batch))
    if recipe.hard_negatives:
        low, high = recipe.hard_negative_ranks
        for position, _ in batch:
            window = [r for r in domain.ranked_rows[position, low:high] if r not in domain.relevant_rows[position]]
            if window:
                picks = rng.choice(len(window), size=min(recipe.hard_negatives, len(window)), replace=False)
                columns.extend(int(window[i]) for i in picks)
        columns = list(dict.fromkeys(columns))
    column_of = {row: index for index, row in enumerate(columns)}
    logits = queries @ domain.units[columns].T / config.temperature

    mask = torch.zeros_like(logits, dtype=torch.bool)
    for row, (position, target) in enumerate(batch):
        for relevant in domain.relevant_rows[position]:
            column = column_of.get(relevant)
            if column is not None and relevant != target:
                mask[row, column] = True
    logits = logits.masked_fill(mask, float("-inf"))
    labels = torch.tensor([column_of[target] for _, target in batch], device=logits.device)
    return torch.nn.functional.cross_entropy(logits, labels)


def _teacher_loss(queries: Any, domain: _Domain, batch: list[tuple[int, int]], recipe: Recipe,
                  config: TrainingConfig) -> Any:
    """KL divergence from the teacher's softmax over each query's candidates to the student's.

    Teacher scores are in cosine units, so both softmaxes use the same temperature.
    """
    import torch

    positions = torch.tensor([position for position, _ in batch], device=queries.device)
    rows = domain.teacher_rows[positions]
    candidates = domain.units[rows]
    student = torch.einsum("bd,bcd->bc", queries, candidates) / config.temperature
    teacher = torch.softmax(domain.teacher_scores[positions] / config.temperature, dim=1)
    return torch.nn.functional.kl_div(torch.log_softmax(student, dim=1), teacher, reduction="batchmean")


def _encode_training_model(model: Any, texts: list[str], batch_size: int) -> np.ndarray:
    """Encode with the (unmerged) model under training, in eval mode."""
    vectors = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                           show_progress_bar=False)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _validate(data: TrainingData, encode: Callable[[list[str]], np.ndarray]) -> float:
    """Return mean nDCG@10 of the validation queries encoded by ``encode``."""
    query_ids = sorted(data.qrels)
    scores = data.ndcg_per_query(encode([data.queries[q] for q in query_ids]), query_ids)
    return float(np.mean(list(scores.values())))
