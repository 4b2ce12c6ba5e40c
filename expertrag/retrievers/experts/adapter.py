"""Query-side LoRA adapters on the shared base encoder, and merged encoders for querying.

An adapter is saved in PEFT's file layout (``adapter_config.json`` and
``adapter_model.safetensors`` with ``base_model.model.<module>.lora_A.weight`` keys), so
PEFT can load it as well. For querying, :func:`merged_copy` folds an adapter into private
copies of only the linear layers it changes and shares every other tensor with the base
model, which is never modified: a merged expert costs one plain encoder pass per query.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts.errors import AdapterLoadError, ExpertNotFoundError

logger = logging.getLogger(__name__)

BASE_EXPERT = "base"
"""Name under which the frozen base encoder takes part in routing, fusion and tables."""

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_KEY_PREFIX = "base_model.model."
DEFAULT_TARGET_MODULES = ("query", "key", "value", "output.dense", "intermediate.dense")
"""Every linear layer of a BERT encoder block; ``output.dense`` also matches ``attention.output.dense``.
The pooler (``pooler.dense``) is left out because sentence-transformers' mean pooling never uses it."""


@dataclass(frozen=True)
class LoraSpec:
    """Shape of a LoRA adapter: rank, scaling numerator ``alpha``, dropout and target modules."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES

    @property
    def scaling(self) -> float:
        """Factor PEFT applies to ``B @ A``: ``alpha / rank`` (rsLoRA scaling is not supported)."""
        return self.alpha / self.rank

    def to_peft(self) -> Any:
        """Return the equivalent ``peft.LoraConfig``."""
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none")

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as a JSON-ready dict."""
        return {**asdict(self), "target_modules": list(self.target_modules)}


@dataclass
class LoraWeights:
    """The trained factors of one adapter: module path inside the transformer → (A, B).

    ``A`` has shape (rank, in_features) and ``B`` (out_features, rank); the weight change
    of a module is ``B @ A * spec.scaling``, as in PEFT's ``get_delta_weight``.
    """

    spec: LoraSpec
    factors: dict[str, tuple[Any, Any]] = field(repr=False)

    def delta(self, module_name: str) -> Any:
        """Return the weight change of one module as a float32 tensor."""
        lora_a, lora_b = self.factors[module_name]
        return (lora_b.float() @ lora_a.float()) * self.spec.scaling

    def fingerprint(self) -> str:
        """Return a sha256 of the spec and every factor, stable across save and load."""
        spec = {**self.spec.to_dict(), "target_modules": sorted(self.spec.target_modules)}
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
        for name in sorted(self.factors):
            lora_a, lora_b = self.factors[name]
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(lora_a.detach().cpu().float().numpy()).tobytes())
            digest.update(np.ascontiguousarray(lora_b.detach().cpu().float().numpy()).tobytes())
        return digest.hexdigest()

    def save(self, folder: Path, base_model_name: str = "") -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (PEFT's layout) into ``folder``."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, (lora_a, lora_b) in sorted(self.factors.items()):
            tensors[f"{PEFT_KEY_PREFIX}{name}.lora_A.weight"] = lora_a.detach().cpu().float().contiguous()
            tensors[f"{PEFT_KEY_PREFIX}{name}.lora_B.weight"] = lora_b.detach().cpu().float().contiguous()
        save_file(tensors, str(folder / WEIGHTS_FILE))
        config = self.spec.to_peft()
        config.base_model_name_or_path = base_model_name or None
        config.save_pretrained(str(folder))

    @classmethod
    def load(cls, folder: Path) -> "LoraWeights":
        """Read an adapter written by :meth:`save` (or by PEFT for a BERT-style model).

        Raises:
            AdapterLoadError: a file is missing or unreadable, or a module lacks one of its two factors.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise AdapterLoadError(f"Adapter file missing: {path}")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            spec = LoraSpec(rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                            dropout=float(config.get("lora_dropout", 0.0)),
                            target_modules=tuple(sorted(config.get("target_modules") or ())))
        except (ValueError, KeyError, TypeError) as error:
            raise AdapterLoadError(f"Invalid adapter config {config_path}: {error}") from None
        if config.get("use_rslora") or config.get("use_dora"):
            raise AdapterLoadError(f"{config_path} uses rsLoRA or DoRA, which expertrag does not merge")
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as error:
            raise AdapterLoadError(f"Unreadable adapter weights {weights_path}: {error}") from None

        halves: dict[str, dict[str, Any]] = {}
        for key, tensor in tensors.items():
            name = key.removeprefix(PEFT_KEY_PREFIX)
            for part in ("lora_A", "lora_B"):
                suffix = f".{part}.weight"
                if name.endswith(suffix):
                    halves.setdefault(name[: -len(suffix)], {})[part] = tensor
        incomplete = sorted(name for name, pair in halves.items() if len(pair) != 2)
        if not halves or incomplete:
            raise AdapterLoadError(f"{weights_path} contains no complete LoRA factor pairs (incomplete: {incomplete[:3]})")
        factors = {name: (pair["lora_A"], pair["lora_B"]) for name, pair in halves.items()}
        return cls(spec=spec, factors=factors)


def transformer_of(model: Any) -> Any:
    """Return the Hugging Face transformer inside a sentence-transformers model."""
    try:
        return model[0].auto_model
    except (AttributeError, IndexError, TypeError):
        raise AdapterLoadError(f"{type(model).__name__} has no transformer module at position 0") from None


def attach_lora(model: Any, spec: LoraSpec, adapter_name: str = "expert") -> None:
    """Inject a trainable LoRA adapter into ``model`` in place and freeze every other parameter.

    Uses PEFT's ``inject_adapter_in_model`` directly, because sentence-transformers'
    ``add_adapter`` goes through the transformers integration, which rejects PEFT < 0.22.
    """
    from peft import inject_adapter_in_model

    inject_adapter_in_model(spec.to_peft(), transformer_of(model), adapter_name=adapter_name)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = "lora_" in name


def extract_lora(model: Any, spec: LoraSpec, adapter_name: str = "expert") -> LoraWeights:
    """Copy the current factors of an adapter injected by :func:`attach_lora` to the CPU."""
    factors = {}
    for name, module in transformer_of(model).named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is not None and adapter_name in lora_a:
            factors[name] = (lora_a[adapter_name].weight.detach().cpu().clone(),
                             module.lora_B[adapter_name].weight.detach().cpu().clone())
    if not factors:
        raise AdapterLoadError(f"The model has no adapter named {adapter_name!r}")
    return LoraWeights(spec=spec, factors=factors)


def merged_copy(base: Any, weights: LoraWeights) -> Any:
    """Return a copy of ``base`` with ``weights`` merged in, sharing every tensor the adapter leaves unchanged.

    Only the weight matrices of the adapted linear layers are duplicated (about 42 MB for
    all linear layers of MiniLM-L6), so the base model's outputs never change.

    Raises:
        AdapterLoadError: an adapted module is missing from ``base`` or has another shape.
    """
    import torch

    transformer = transformer_of(base)
    replaced: set[int] = set()
    for module_name, (lora_a, lora_b) in weights.factors.items():
        try:
            module = transformer.get_submodule(module_name)
        except AttributeError:
            raise AdapterLoadError(f"The adapter changes {module_name!r}, which the base encoder does not have") from None
        if not isinstance(module, torch.nn.Linear):
            raise AdapterLoadError(f"The adapter changes {module_name!r}, which is not a linear layer")
        expected = (weights.spec.rank, module.in_features), (module.out_features, weights.spec.rank)
        if (tuple(lora_a.shape), tuple(lora_b.shape)) != expected:
            raise AdapterLoadError(f"LoRA factors of {module_name!r} have shapes {tuple(lora_a.shape)} and "
                                   f"{tuple(lora_b.shape)}; the base encoder needs {expected[0]} and {expected[1]}")
        replaced.add(id(module.weight))

    memo: dict[int, Any] = {}
    for tensor in (*base.parameters(), *base.buffers()):
        if id(tensor) not in replaced:
            memo[id(tensor)] = tensor
    for module in base.modules():
        for attribute in ("processor", "input_formatter"):
            value = getattr(module, attribute, None)
            if value is not None:
                memo[id(value)] = value
    merged = copy.deepcopy(base, memo)

    merged_transformer = transformer_of(merged)
    with torch.no_grad():
        for module_name in weights.factors:
            linear = merged_transformer.get_submodule(module_name)
            linear.weight.add_(weights.delta(module_name).to(linear.weight.device, linear.weight.dtype))
            linear.weight.requires_grad_(False)
    merged.eval()
    return merged


def encode_with(model: Any, texts: list[str], batch_size: int) -> np.ndarray:
    """Encode ``texts`` with a sentence-transformers model exactly as :meth:`Encoder.encode` does."""
    if not texts:
        dimension = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else model.get_sentence_embedding_dimension()
        return np.zeros((0, int(dimension)), dtype=np.float32)
    vectors = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                           show_progress_bar=False)
    return np.ascontiguousarray(vectors, dtype=np.float32)


class ExpertEncoders:
    """The base encoder plus one merged encoder per expert, picked by name on each call.

    Switching experts never reloads or changes the base model: every expert is a merged
    copy that shares the base model's unchanged tensors.
    """

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._models: dict[str, Any] = {}
        self._fingerprints: dict[str, str] = {}

    @property
    def names(self) -> list[str]:
        """Names of the loaded experts, without the base encoder."""
        return sorted(self._models)

    def add(self, name: str, weights: LoraWeights) -> None:
        """Merge ``weights`` into a new expert encoder called ``name``, replacing one of that name."""
        if name == BASE_EXPERT:
            raise ValueError(f"{BASE_EXPERT!r} is reserved for the base encoder")
        fingerprint = weights.fingerprint()
        if self._fingerprints.get(name) == fingerprint:
            return
        self._models[name] = merged_copy(self.encoder.model, weights)
        self._fingerprints[name] = fingerprint

    def remove(self, name: str) -> None:
        """Drop an expert encoder. Unknown names are ignored."""
        self._models.pop(name, None)
        self._fingerprints.pop(name, None)

    def has(self, name: str) -> bool:
        """Return True for the base encoder and every loaded expert."""
        return name == BASE_EXPERT or name in self._models

    def encode(self, texts: list[str], expert: str = BASE_EXPERT) -> np.ndarray:
        """Encode ``texts`` with one expert (``base`` for the plain base encoder) into unit vectors."""
        if expert == BASE_EXPERT:
            return self.encoder.encode(texts)
        if expert not in self._models:
            raise ExpertNotFoundError(f"Expert {expert!r} is not loaded (loaded: {', '.join(self.names) or 'none'})")
        return encode_with(self._models[expert], texts, self.encoder.batch_size)
