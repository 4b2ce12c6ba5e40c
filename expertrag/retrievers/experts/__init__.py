"""Domain experts (query-side LoRA adapters on the shared base encoder) and the router over them.

Typical use::

    from expertrag.retrievers.experts import (
        ExpertRegistry, RouterRetriever, load_beir_training_data, train_expert)

    data = load_beir_training_data("data/scifact", "train", encoder, cache_dir)
    registry = ExpertRegistry(kb_path / "experts")
    registry.add(train_expert("scifact", data, encoder))
    vectors, decisions = RouterRetriever(registry, encoder).encode(["Does vitamin D prevent fractures?"])
"""

from expertrag.retrievers.experts.adapter import BASE_EXPERT, ExpertEncoders, LoraSpec, LoraWeights, merged_copy
from expertrag.retrievers.experts.data import (
    TrainingData,
    inverse_cloze_pair,
    load_beir_documents,
    load_beir_training_data,
    pseudo_query,
    pseudo_query_training_data,
)
from expertrag.retrievers.experts.errors import AdapterLoadError, ExpertError, ExpertNotFoundError, ExpertRejectedError
from expertrag.retrievers.experts.pilots import PilotLibrary, StaticEmbedder
from expertrag.retrievers.experts.registry import ExpertInfo, ExpertRegistry
from expertrag.retrievers.experts.router import (
    RoutedResult,
    RouterRetriever,
    RoutingDecision,
    fuse_rankings,
    parse_strategy,
    vector_index_search,
)
from expertrag.retrievers.experts.training import DEFAULT_RECIPES, Recipe, TrainedExpert, TrainingConfig, train_expert

__all__ = [
    "BASE_EXPERT", "DEFAULT_RECIPES", "AdapterLoadError", "ExpertEncoders", "ExpertError", "ExpertInfo",
    "ExpertNotFoundError", "ExpertRegistry", "ExpertRejectedError", "LoraSpec", "LoraWeights", "PilotLibrary",
    "Recipe", "RoutedResult", "RouterRetriever", "RoutingDecision", "StaticEmbedder", "TrainedExpert",
    "TrainingConfig", "TrainingData", "fuse_rankings", "load_beir_documents", "load_beir_training_data",
    "inverse_cloze_pair", "merged_copy", "parse_strategy", "pseudo_query", "pseudo_query_training_data", "train_expert",
    "vector_index_search",
]
