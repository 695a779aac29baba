"""The latent cache: every image encoded once by the VAE, shared across runs and across DDP ranks.

Entries live in a cache folder outside the dataset and the run (by default
``<user cache dir>/sdtui/latents``, e.g. ``~/.cache/sdtui/latents``), one safetensors file
each, named by a digest of what decides the latents: the image file (absolute path, size,
modification time), the bucket (resolution and crop) and the VAE (config, dtype, a weight
fingerprint). A second run on the same images and settings, a resumed run and every rank of a
DDP run find them there and encode nothing.

With several processes each rank looks after its own share of the entries (entry ``n`` goes
to rank ``n mod world``, cached or not, so the shares never depend on who wrote what first),
encodes what of it is missing, then all wait once for the slowest share and read the others'
files (``core.train.data.shared_cache``: the protocol the text cache and class images share). ``settings.cache_latents_to_disk`` decides
whether training then reads the files lazily (less RAM) or holds them in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.atomic import write_atomic
from core.dataset.buckets import Bucket
from core.train.data.examples import load_example
from core.train.data.item import CLASS, INSTANCE
from core.train.data.items import CacheNotValid, latent_cache_blocker
from core.train.data.shared_cache import fill_shared
from core.train.masks import mask_tag, on_grid

log = logging.getLogger(__name__)

Key = tuple[str, int, Bucket]
#: Pixels per VAE batch: 8 images at 512², 2 at 1024² (the VAE encoder's activations grow with the area).
BATCH_PIXELS = 8 * 512 * 512


def default_cache_dir() -> Path:
    """``<user cache dir>/latents`` (``core.userdirs``: ``$XDG_CACHE_HOME/sdtui`` on Linux)."""
    from core.userdirs import cache_dir

    return cache_dir() / "latents"


class LatentCache:
    """VAE latents (normalised by the family's ``encode_latents``: the posterior's mode) per (kind, item index, bucket), in memory or as files."""

    def __init__(self) -> None:
        self.memory: dict[Key, tuple[Any, tuple[int, int], tuple[int, int]]] = {}
        self.files: dict[Key, Path] = {}
        #: Loss masks on the latent grid of the in-memory entries that have one.
        self.masks: dict[Key, Any] = {}
        self.encoded = 0
        self.reused = 0

    def __contains__(self, key: Key) -> bool:
        return key in self.memory or key in self.files

    def __len__(self) -> int:
        return len(self.memory) + len(self.files)

    def get(self, key: Key) -> tuple[Any, tuple[int, int], tuple[int, int]]:
        """``(latents [4, h, w], original_size, crop_top_left)`` of one entry."""
        if key in self.memory:
            return self.memory[key]
        return read_entry(self.files[key])

    def mask(self, key: Key) -> Any:
        """The loss mask [1, h, w] on the latent grid stored with an entry, or None."""
        if key in self.files:
            return read_mask(self.files[key])
        return self.masks.get(key)


def write_entry(path: Path, latents: Any, original_size: tuple[int, int], crop_top_left: tuple[int, int], mask: Any = None) -> None:
    """One cache file (with the loss mask on the latent grid, if any), written atomically (no fsync:
    a file a crash lost is simply encoded again)."""
    from safetensors.torch import save

    meta = {"original_size": f"{original_size[0]},{original_size[1]}", "crop_top_left": f"{crop_top_left[0]},{crop_top_left[1]}"}
    tensors = {"latents": latents.detach().to("cpu", torch.float32).contiguous()}
    if mask is not None:
        tensors["mask"] = mask.detach().to("cpu", torch.float32).contiguous()
    write_atomic(path, save(tensors, metadata=meta), durable=False)


def read_mask(path: Path) -> Any:
    """The loss mask stored in one cache file, or None (copied into memory, as ``read_entry``)."""
    from safetensors.torch import load

    return load(path.read_bytes()).get("mask")


def read_entry(path: Path) -> tuple[Any, tuple[int, int], tuple[int, int]]:
    """``(latents, original_size, crop_top_left)`` from one cache file, copied into memory (a tensor
    mapped from the file would crash the process with SIGBUS if someone truncated the file)."""
    from safetensors.torch import load

    raw = path.read_bytes()
    latents = load(raw)["latents"]
    meta = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    size = tuple(int(v) for v in meta["original_size"].split(","))
    crop = tuple(int(v) for v in meta["crop_top_left"].split(","))
    return latents, size, crop  # type: ignore[return-value]


def vae_fingerprint(vae: Any) -> str:
    """What makes one VAE's latents differ from another's: config, dtype and a weight sample."""
    config = {k: v for k, v in dict(getattr(vae, "config", {})).items() if not k.startswith("_")}
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode())
    add_weight_sample(digest, vae)
    return digest.hexdigest()[:16]


def add_weight_sample(digest: Any, module: Any) -> None:
    """Feed ``digest`` the dtype and a sample of the weights of ``module`` (its first, middle and
    last tensors): enough to tell two checkpoints of one architecture apart without reading them all."""
    params = list(module.parameters())
    digest.update(str(params[0].dtype).encode())
    # a quantized base (settings.text_encoder_precision) computes other outputs: its storage kinds count
    quantized = sorted({f"{type(p).__name__}/{type(p.data).__name__}/{p.dtype}" for p in params if _quantized(p)})
    if quantized:
        digest.update("|".join(quantized).encode())
    for param in (params[0], params[len(params) // 2], params[-1]):
        plain = param.detach().dequantize() if type(param.data) is not torch.Tensor else param.detach()
        digest.update(plain.flatten()[:4096].to("cpu", torch.float32).numpy().tobytes())


def _quantized(param: Any) -> bool:
    """Whether ``param`` is stored quantized (a tensor subclass such as torchao's, or integer bytes)."""
    return type(param.data) is not torch.Tensor or not param.dtype.is_floating_point


def entry_path(folder: Path, image: str, bucket: Bucket, vae_tag: str, mask_tag: str = "") -> Path:
    """The cache file of ``image`` at ``bucket`` for the VAE ``vae_tag`` and the loss mask ``mask_tag``
    (``core.train.masks.mask_tag``; "" = unmasked) (OSError if the image is gone)."""
    stat = os.stat(image)
    key = f"{os.path.abspath(image)}|{stat.st_size}|{stat.st_mtime_ns}|{bucket[0]}x{bucket[1]}|center|{vae_tag}"
    if mask_tag:
        key += f"|mask:{mask_tag}"
    digest = hashlib.sha1(key.encode()).hexdigest()
    return folder / digest[:2] / f"{digest}.safetensors"


def _jobs(train_data: Any) -> list[tuple[Key, Any]]:
    """Every (key, item) to cache, grouped by bucket: instance images at theirs, class images at every used bucket."""
    used = sorted(train_data.items_by_bucket)
    jobs: list[tuple[Key, Any]] = [((INSTANCE, i, item.bucket), item) for i, item in enumerate(train_data.items)]
    jobs += [((CLASS, i, bucket), item) for i, item in enumerate(train_data.class_items) for bucket in used]
    jobs.sort(key=lambda job: (job[0][2], job[0][0], job[0][1]))
    return jobs


def cache_latents(
    components: Any,
    train_data: Any,
    device: Any,
    dtype: Any,
    folder: str | Path | None = None,
    in_memory: bool = True,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LatentCache:
    """Encode what is not cached yet (this rank's share), then make every entry available.

    ``folder`` is the shared cache folder (``None``: memory only, one process). ``barrier`` is
    called once between encoding and reading when ``world`` > 1. ``progress(done, total)``
    follows what this rank encodes; ``encoded`` and ``reused`` of the cache count this rank's share. Images that cannot be read are skipped with a warning; a cache file that does not read back (truncated, overwritten) is encoded again and replaced, never skipped. Sets
    ``train_data.latents`` and returns the cache; raises ``CacheNotValid`` with random crop or flip.
    """

    blocker = latent_cache_blocker(train_data.settings)
    if blocker:
        raise CacheNotValid(blocker)
    if folder is None and world > 1:
        raise ValueError("a latent cache shared by several processes needs a folder")
    vae = components.vae
    vae.to(device=device) if vae.dtype == dtype else vae.to(device=device, dtype=dtype)
    root = Path(folder) if folder is not None else None
    tag = vae_fingerprint(vae) if root is not None else ""
    cache = LatentCache()
    jobs: list[tuple[Key, Any, Path | None]] = []
    for key, item in _jobs(train_data):
        try:
            mask = mask_tag(item, key[0], train_data.masked, bool(train_data.settings.get("alpha_mask")))
            jobs.append((key, item, entry_path(root, item.path, key[2], tag, mask) if root is not None else None))
        except OSError as exc:
            log.warning("skipping %s: %s", item.path, exc)

    def reuse(job: tuple[Key, Any, Path | None]) -> object | None:
        key, _item, path = job
        entry = read_valid_entry(path) if path is not None and path.is_file() else None
        if path is None or entry is None:
            return None  # not cached, or damaged: encoded again and the file replaced
        if in_memory:
            _keep(cache, key, path, entry)
        else:
            cache.files[key] = path
        return entry

    def make(mine: list[tuple[Key, Any, Path | None]]) -> None:
        _encode(components, train_data, vae, device, dtype, cache, mine, in_memory, progress)

    def adopt(job: tuple[Key, Any, Path | None]) -> None:
        key, _item, path = job
        if path is not None and key not in cache and path.is_file():
            _add_others(cache, key, path, in_memory)

    cache.reused = fill_shared(jobs, rank, world, barrier, make, adopt, reuse)
    train_data.latents = cache
    return cache


def _encode(
    components: Any,
    train_data: Any,
    vae: Any,
    device: Any,
    dtype: Any,
    cache: LatentCache,
    mine: list[tuple[Key, Any, Path | None]],
    in_memory: bool,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Encode this rank's missing entries in batches of one bucket (``BATCH_PIXELS``), keep and write them."""
    if progress is not None:
        progress(0, len(mine))
    done = 0
    start = 0
    while start < len(mine):
        bucket = mine[start][0][2]
        size = max(1, BATCH_PIXELS // (bucket[0] * bucket[1]))
        chunk_jobs = [job for job in mine[start : start + size] if job[0][2] == bucket]
        start += len(chunk_jobs)
        chunk = []
        for key, item, path in chunk_jobs:
            try:
                mask_file = item.mask if key[0] == INSTANCE else ""
                chunk.append((key, path, load_example(item.path, bucket, mask_path=mask_file, alpha_mask=key[0] == INSTANCE and bool(train_data.settings.get("alpha_mask")))))
            except Exception as exc:  # noqa: BLE001 - a corrupt image must not stop training
                log.warning("skipping unreadable image %s: %s", item.path, exc)
        if chunk:
            pixels = torch.stack([ex.pixels for _, _, ex in chunk]).to(device=device, dtype=dtype)
            latents = components.runtime.encode_latents(vae, pixels)
            for (key, path, ex), lat in zip(chunk, latents):
                mask = on_grid(ex.mask[None], tuple(lat.shape[-2:]))[0] if ex.mask is not None else None
                if path is None or in_memory:
                    cache.memory[key] = (lat.detach().to("cpu", torch.float32).contiguous(), ex.original_size, ex.crop_top_left)
                    if mask is not None:
                        cache.masks[key] = mask
                if path is not None:
                    write_entry(path, lat, ex.original_size, ex.crop_top_left, mask)
                    if not in_memory:
                        cache.files[key] = path
                cache.encoded += 1
        done += len(chunk_jobs)
        if progress is not None:
            progress(done, len(mine))


def read_valid_entry(path: Path) -> tuple[Any, tuple[int, int], tuple[int, int]] | None:
    """One cache file's entry, or None (a warning) when it does not read back as finite
    ``[channels, h, w]`` latents with their sizes: truncated, overwritten, half written."""
    try:
        entry = read_entry(path)
        latents = entry[0]
        if latents.ndim != 3 or not bool(torch.isfinite(latents).all()) or len(entry[1]) != 2 or len(entry[2]) != 2:
            raise ValueError(
                f"it holds latents of shape {tuple(latents.shape)} with values that are not all finite" if latents.ndim == 3 else f"it holds latents of shape {tuple(latents.shape)}"
            )
    except Exception as exc:  # noqa: BLE001 - any bytes in a cache file: the image is encoded again
        log.warning("encoding %s again: the cached latents do not read back (%s)", path, exc)
        return None
    return entry


def _add_others(cache: LatentCache, key: Key, path: Path, in_memory: bool) -> None:
    """Add an entry of another rank's share (that rank checked or wrote it before the barrier);
    one that does not read back now stops the run rather than training without its image."""
    if not in_memory:
        cache.files[key] = path
        return
    entry = read_valid_entry(path)
    if entry is None:
        raise RuntimeError(f"the latent cache file {path} was damaged while this run read it (another run writing the same cache?); start the run again to encode it anew")
    _keep(cache, key, path, entry)


def _keep(cache: LatentCache, key: Key, path: Path, entry: tuple[Any, tuple[int, int], tuple[int, int]]) -> None:
    """Hold a checked file entry in memory, with the loss mask stored beside its latents."""
    cache.memory[key] = entry
    mask = read_mask(path)
    if mask is not None:
        cache.masks[key] = mask
