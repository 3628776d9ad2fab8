"""The artifact cache: every stored artifact is keyed by exactly what it reads.

An :class:`Artifact` declares, once and next to the code that computes it, the
configuration fields it reads and its format version. Its key hashes those
fields' values, the extra parameters the stage passes (a seed, a mask ratio)
and the *digests of the artifacts it consumes* (a network's key consumes the
digest of its training tensors; logits the network's key and the images'
digest). The computing code sees the configuration only through
:meth:`Artifact.view`, which refuses any field the artifact did not declare,
so a dependency cannot be left out of a key by hand.

Each artifact is stored as ``<name>-<key><suffix>`` with a JSON manifest
``<name>-<key>.json`` written last (atomically): an artifact without its
manifest was interrupted and is recomputed. A load that fails verification
(for example cached logits whose labels differ) recomputes it too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from ddcal import distributed
from ddcal._io import atomic_write
from ddcal.config import ExperimentConfig

__all__ = ["Artifact", "ArtifactCache", "ConfigView", "StaleArtifactError", "tensor_digest"]

T = TypeVar("T")

_DIGEST_CHARS = 16


def tensor_digest(*tensors: Tensor | None) -> str:
    """A content digest of ``tensors``: dtype, shape and bytes of each (``None`` counts too)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none;")
            continue
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{data.dtype};{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:_DIGEST_CHARS]


class StaleArtifactError(Exception):
    """A cached artifact failed verification on load; the cache recomputes it."""


class ConfigView:
    """The fields of a configuration that one artifact declared; any other is refused."""

    def __init__(self, config: ExperimentConfig, artifact: Artifact) -> None:
        self._config = config
        self._artifact = artifact

    def __getattr__(self, name: str) -> Any:
        if name not in self._artifact.reads:
            raise AttributeError(
                f"artifact {self._artifact.name!r} reads config key {name!r} without declaring "
                f"it; add it to its reads {self._artifact.reads}"
            )
        return getattr(self._config, name)


@dataclass(frozen=True)
class Artifact:
    """A kind of cached artifact.

    Attributes:
        name: file-name prefix, e.g. ``"net"``.
        reads: the :class:`~ddcal.config.ExperimentConfig` fields its computation reads.
        version: bumped when the stored format or the computation changes.
    """

    name: str
    reads: tuple[str, ...]
    version: int = 1

    def __post_init__(self) -> None:
        known = set(ExperimentConfig.__dataclass_fields__)
        unknown = sorted(set(self.reads) - known)
        if unknown:
            raise ValueError(f"artifact {self.name!r} reads unknown config keys {unknown}")

    def view(self, config: ExperimentConfig) -> ConfigView:
        """``config`` restricted to :attr:`reads`."""
        return ConfigView(config, self)

    def describe(
        self,
        config: ExperimentConfig | None,
        *,
        inputs: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Everything the key hashes, as plain values (also the manifest's content).

        ``config`` may be ``None`` only for an artifact that reads no field.
        """
        if config is None and self.reads:
            raise ValueError(f"artifact {self.name!r} reads {self.reads}: give the config")
        return {
            "artifact": self.name,
            "version": self.version,
            "config": {name: getattr(config, name) for name in self.reads},  # empty if None
            "inputs": dict(inputs or {}),
            "params": dict(params or {}),
        }

    def key(
        self,
        config: ExperimentConfig | None,
        *,
        inputs: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> str:
        """The artifact's key: a hash of :meth:`describe`."""
        text = json.dumps(self.describe(config, inputs=inputs, params=params), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST_CHARS]


class ArtifactCache:
    """Artifacts under one folder, computed once and reused while their key holds.

    Within one run an artifact is also held in memory after its first use.

    Attributes:
        reused: file names of the artifacts loaded instead of computed, in order.
        computed: file names of the artifacts computed (and stored), in order.
    """

    def __init__(self, root: str | Path, *, log: Callable[[str], None] = lambda _: None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.reused: list[str] = []
        self.computed: list[str] = []
        # What this run already has in memory: one artifact read by many rows is loaded once.
        self._held: dict[tuple[str, str], Any] = {}

    def path(self, artifact: Artifact, key: str, suffix: str = ".pt") -> Path:
        return self.root / f"{artifact.name}-{key}{suffix}"

    def _manifest(self, artifact: Artifact, key: str) -> Path:
        return self.root / f"{artifact.name}-{key}.json"

    def stored(self, artifact: Artifact, key: str, suffix: str = ".pt") -> bool:
        """Whether the artifact of ``key`` is held or on disk (``get`` still verifies it)."""
        held = (artifact.name, key) in self._held
        on_disk = (
            self._manifest(artifact, key).exists() and self.path(artifact, key, suffix).exists()
        )
        return held or on_disk

    def get(
        self,
        artifact: Artifact,
        config: ExperimentConfig | None,
        *,
        compute: Callable[[Path], T],
        load: Callable[[Path], T],
        inputs: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        suffix: str = ".pt",
        collective: bool = False,
    ) -> tuple[T, str]:
        """The artifact and its key: loaded when stored and valid, else computed and stored.

        Args:
            compute: writes the artifact to the path it is given and returns it.
            load: reads it back from that path; raises :class:`StaleArtifactError`
                (or ``ValueError``) when what it finds does not verify.
            collective: under ``torchrun``, every process computes it together (a
                distillation) and ``compute`` writes it on process 0 alone
                (:func:`ddcal.distributed.is_main`); process 0 writes the manifest
                and all wait until it is stored. Otherwise the process that computes
                an artifact stores it.
        """
        key = artifact.key(config, inputs=inputs, params=params)
        if (artifact.name, key) in self._held:
            return self._held[artifact.name, key], key
        value = self._load_or_compute(
            artifact, config, key, compute, load, inputs, params, suffix, collective
        )
        self._held[artifact.name, key] = value
        return value, key

    def _load_or_compute(
        self,
        artifact: Artifact,
        config: ExperimentConfig | None,
        key: str,
        compute: Callable[[Path], T],
        load: Callable[[Path], T],
        inputs: Mapping[str, str] | None,
        params: Mapping[str, Any] | None,
        suffix: str,
        collective: bool,
    ) -> T:
        target = self.path(artifact, key, suffix)
        manifest = self._manifest(artifact, key)
        description = artifact.describe(config, inputs=inputs, params=params)
        if manifest.exists() and target.exists():
            try:
                stored = json.loads(manifest.read_text())
                if stored != json.loads(json.dumps(description)):
                    raise StaleArtifactError(f"manifest {manifest.name} describes another artifact")
                value = load(target)
            except (StaleArtifactError, ValueError) as problem:
                self.log(f"  recomputing {target.name}: {problem}")
            else:
                self.reused.append(target.name)
                return value
        writer = not collective or distributed.is_main()
        # A folder artifact (expert shards) left half-done resumes from what it holds.
        if writer:
            manifest.unlink(missing_ok=True)
        value = compute(target)
        self.computed.append(target.name)
        if writer:
            with atomic_write(manifest) as handle:
                handle.write((json.dumps(description, indent=2, sort_keys=True) + "\n").encode())
        if collective:
            distributed.barrier()
        return value
