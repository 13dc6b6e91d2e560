"""Random projections of gradient vectors: our sparse JL transform and TRAK's projectors.

Every projector maps [B, in_dim] float32 to [B, sum(dims)]: one block per requested
output dimension, in the order of `dims` (with one dimension, simply [B, d]). `describe()`
is the projector's identity for a manifest: features from projectors whose descriptions
differ (type, backend, seed, dims, ...) must never be compared.

- ``sjlt``: a sparse Johnson-Lindenstrauss transform (Kane & Nelson, arXiv 1012.1577, block
  construction): each input coordinate is added, with a random sign and weight
  1/sqrt(s), to one bucket in each of s equal blocks of the output. It costs s additions
  per input coordinate instead of d multiply-adds, and the matrix is drawn on the CPU
  from the seed, so it is the same on every device ("backend": "torch").
- ``trak-basic``: `trak.projectors.BasicProjector` (Rademacher), as LESS uses on CPU; dense,
  regenerated block by block on each call: exact LESS reproduction, very slow at d=8192.
- ``trak-cuda``: `trak.projectors.CudaProjector` (needs CUDA and the `fast_jl` extension).
  It draws a different matrix than BasicProjector from the same seed.
"""

from __future__ import annotations

import hashlib
import logging
import math
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch

from influence.constants import PROJECTOR_KINDS
from influence.errors import ConfigError, UnknownNameError

log = logging.getLogger(__name__)

SJLT_VERSION = 1  # bump when the hashing scheme changes: old features then no longer match
_SJLT_CHUNK = 1 << 20  # columns hashed per generator seed (and processed per step)


@runtime_checkable
class Projector(Protocol):
    """Maps gradient vectors [B, in_dim] to features [B, sum(dims)]."""

    in_dim: int
    dims: tuple[int, ...]

    def project(self, grads: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...


@runtime_checkable
class StreamingProjector(Projector, Protocol):
    """A projector that can take a vector column block by column block (no [B, in_dim] buffer)."""

    def zeros(self, batch: int) -> torch.Tensor: ...

    def accumulate(self, out: torch.Tensor, block: torch.Tensor, offset: int) -> None: ...


def _dims(dims: int | Sequence[int]) -> tuple[int, ...]:
    dims = (dims,) if isinstance(dims, int) else tuple(int(d) for d in dims)
    if not dims or any(d <= 0 for d in dims):
        raise ConfigError(f"projection dimensions must be positive integers, got {dims}")
    if len(set(dims)) != len(dims):
        raise ConfigError(f"projection dimensions must be distinct, got {dims}")
    return dims


def _check_input(grads: torch.Tensor, in_dim: int) -> None:
    if grads.dim() != 2 or grads.shape[1] != in_dim:
        raise ConfigError(f"the projector was built for vectors of length {in_dim}, got shape "
                          f"{tuple(grads.shape)}; build it with in_dim = the gradient dimension")


def dim_slices(dims: Sequence[int]) -> dict[int, slice]:
    """Where each output dimension's block sits in a projector's output."""
    out, start = {}, 0
    for d in dims:
        out[int(d)] = slice(start, start + int(d))
        start += int(d)
    return out


def _derived_seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class SJLTProjector:
    """Sparse JL transform, s nonzeros per input coordinate, one per output block.

    The hash of a column depends only on (seed, d, s, column), not on `in_dim`, the device
    or the other requested dims. Index and sign arrays are drawn once and kept: about
    8 * s * in_dim bytes per output dimension.
    """

    name = "sjlt"

    def __init__(self, in_dim: int, dims: int | Sequence[int] = 8192, seed: int = 0, *, sparsity: int = 1,
                 device: str | torch.device = "cpu"):
        if in_dim <= 0:
            raise ConfigError(f"input dimension must be positive, got {in_dim}")
        self.in_dim = int(in_dim)
        self.dims = _dims(dims)
        self.seed = int(seed)
        self.sparsity = int(sparsity)
        if self.sparsity < 1 or self.sparsity > min(self.dims):
            raise ConfigError(f"sjlt sparsity must be between 1 and the smallest dim {min(self.dims)}, "
                              f"got {sparsity}")
        self.device = torch.device(device)
        self._tables: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "backend": "torch", "seed": self.seed, "in_dim": self.in_dim,
                "dims": list(self.dims), "sparsity": self.sparsity, "version": SJLT_VERSION}

    def _table(self, d: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(bucket indices int64 [s, in_dim], signed weights float32 [s, in_dim]) for output dim d."""
        s = self.sparsity
        bounds = [round(k * d / s) for k in range(s + 1)]
        index = torch.empty((s, self.in_dim), dtype=torch.int64)
        weight = torch.empty((s, self.in_dim), dtype=torch.float32)
        scale = 1.0 / math.sqrt(s)
        generator = torch.Generator()
        for start in range(0, self.in_dim, _SJLT_CHUNK):
            n = min(_SJLT_CHUNK, self.in_dim - start)
            generator.manual_seed(_derived_seed("sjlt", SJLT_VERSION, self.seed, d, s, start // _SJLT_CHUNK))
            for k in range(s):
                index[k, start:start + n] = torch.randint(bounds[k], bounds[k + 1], (n,), generator=generator)
                signs = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int8)
                weight[k, start:start + n] = (signs.float() * 2.0 - 1.0) * scale
        return index.to(self.device), weight.to(self.device)

    def _ensure_tables(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._tables is None:
            self._tables = [self._table(d) for d in self.dims]
        return self._tables

    def zeros(self, batch: int) -> torch.Tensor:
        return torch.zeros((batch, sum(self.dims)), dtype=torch.float32, device=self.device)

    def accumulate(self, out: torch.Tensor, block: torch.Tensor, offset: int) -> None:
        """Add the projection of input columns [offset, offset + block.shape[1]) into `out`."""
        tables = self._ensure_tables()
        if offset < 0 or offset + block.shape[1] > self.in_dim:
            raise ConfigError(f"columns {offset}..{offset + block.shape[1]} are outside the projector's "
                              f"input dimension {self.in_dim}")
        block = block.to(device=self.device, dtype=torch.float32)
        single = len(self.dims) == 1 and out.is_contiguous()
        parts = [out] if single else [torch.zeros((block.shape[0], d), dtype=torch.float32, device=self.device)
                                      for d in self.dims]
        for start in range(0, block.shape[1], _SJLT_CHUNK):
            chunk = block[:, start:start + _SJLT_CHUNK]
            cols = slice(offset + start, offset + start + chunk.shape[1])
            for part, (index, weight) in zip(parts, tables):
                for k in range(self.sparsity):
                    part.index_add_(1, index[k, cols], chunk * weight[k, cols])
        if not single:
            for part, columns in zip(parts, dim_slices(self.dims).values()):
                out[:, columns] += part

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        _check_input(grads, self.in_dim)
        out = self.zeros(grads.shape[0])
        self.accumulate(out, grads, 0)
        return out


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _fast_jl_available() -> bool:
    try:
        import fast_jl  # noqa: F401  (TRAK's CUDA kernels)
    except ImportError:
        return False
    return True


class TrakBasicProjector:
    """TRAK's BasicProjector (Rademacher, as LESS), one TRAK projector per requested dim."""

    name = "trak-basic"

    def __init__(self, in_dim: int, dims: int | Sequence[int] = 8192, seed: int = 0, *,
                 device: str | torch.device = "cpu", block_size: int = 128):
        # optional and heavy: imported on use
        from trak.projectors import BasicProjector, ProjectionType

        self.in_dim, self.dims, self.seed = int(in_dim), _dims(dims), int(seed)
        self.device = torch.device(device)
        self.block_size = block_size
        self._projectors = [BasicProjector(grad_dim=self.in_dim, proj_dim=d, seed=self.seed,
                                           proj_type=ProjectionType.rademacher, device=self.device,
                                           block_size=block_size, dtype=torch.float32) for d in self.dims]
        self.fallback: dict[str, str] | None = None

    def describe(self) -> dict[str, Any]:
        out = {"type": self.name, "backend": f"trak-basic-{self.device.type}", "seed": self.seed,
               "in_dim": self.in_dim, "dims": list(self.dims), "proj_type": "rademacher",
               "block_size": self.block_size, "trak_version": _trak_version()}
        if self.fallback:
            out["fallback"] = self.fallback
        return out

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        _check_input(grads, self.in_dim)
        grads = grads.to(device=self.device, dtype=torch.float32)
        return torch.cat([p.project(grads, model_id=0) for p in self._projectors], dim=1)


class TrakCudaProjector:
    """TRAK's CudaProjector (Rademacher), one per requested dim; needs CUDA and fast_jl."""

    name = "trak-cuda"

    def __init__(self, in_dim: int, dims: int | Sequence[int] = 8192, seed: int = 0, *,
                 device: str | torch.device = "cuda", max_batch_size: int = 16):
        # optional and heavy: imported on use
        from trak.projectors import CudaProjector, ProjectionType

        self.in_dim, self.dims, self.seed = int(in_dim), _dims(dims), int(seed)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ConfigError(f"trak-cuda projects on a CUDA device, got {self.device}")
        self.max_batch_size = max_batch_size
        self._projectors = [CudaProjector(grad_dim=self.in_dim, proj_dim=d, seed=self.seed,
                                          proj_type=ProjectionType.rademacher, device=self.device,
                                          max_batch_size=max_batch_size) for d in self.dims]

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "backend": "trak-cuda", "seed": self.seed, "in_dim": self.in_dim,
                "dims": list(self.dims), "proj_type": "rademacher", "max_batch_size": self.max_batch_size,
                "trak_version": _trak_version()}

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        _check_input(grads, self.in_dim)
        grads = grads.to(device=self.device, dtype=torch.float32)
        return torch.cat([p.project(grads, model_id=0) for p in self._projectors], dim=1).float()


def _trak_version() -> str:
    try:
        return version("traker")
    except PackageNotFoundError:
        return "unknown"


PROJECTORS: dict[str, Callable[..., Projector]] = {
    cls.name: cls for cls in (SJLTProjector, TrakBasicProjector, TrakCudaProjector)}
if list(PROJECTORS) != list(PROJECTOR_KINDS):  # settings and the CLI list PROJECTOR_KINDS without loading torch
    raise ImportError(f"projectors {list(PROJECTORS)} differ from influence.constants.PROJECTOR_KINDS "
                      f"{list(PROJECTOR_KINDS)}; add a new projector to both")


def default_projector_name(device: str | torch.device = "cpu") -> str:
    """The fastest projector available: our sparse JL transform on every device measured so far."""
    return "sjlt"


def make_projector(name: str | None, in_dim: int, dims: int | Sequence[int] = 8192, seed: int = 0, *,
                   device: str | torch.device | None = None, **options: Any) -> Projector:
    """Build a projector by CLI name (None: the default), falling back loudly where needed.

    Asking for trak-cuda without CUDA or fast_jl logs a warning and returns trak-basic,
    whose describe() records the fallback (the two draw different matrices).

    Raises:
        UnknownNameError: `name` is not in PROJECTORS.
    """
    device = torch.device(device or ("cuda" if _cuda_available() else "cpu"))
    name = name or default_projector_name(device)
    if name not in PROJECTORS:
        raise UnknownNameError("projector", name, list(PROJECTORS))
    if name == "trak-cuda":
        reason = None
        if device.type != "cuda" or not _cuda_available():
            reason = "no CUDA device"
        elif not _fast_jl_available():
            reason = "the fast_jl extension does not import (pip install fast_jl)"
        if reason:
            log.warning("projector trak-cuda is unavailable (%s); falling back to trak-basic on %s, which is much "
                        "slower at large dims; --projector sjlt is the fast CPU choice", reason, device)
            options.pop("max_batch_size", None)
            projector = TrakBasicProjector(in_dim, dims, seed, device=device, **options)
            projector.fallback = {"requested": "trak-cuda", "reason": reason}
            return projector
    return PROJECTORS[name](in_dim, dims, seed, device=device, **options)
