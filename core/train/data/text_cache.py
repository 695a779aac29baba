"""The text-encoder output cache: every caption encoded once, shared across runs and DDP ranks.

Used when the text encoders are frozen (``settings.cache_text_encoder_outputs``). Entries live
in a cache folder outside the dataset and the run (by default ``<user cache dir>/sdtui/text``,
e.g. ``~/.cache/sdtui/text``), one safetensors file per caption, named by a digest of what
decides the outputs: the caption's token ids from every tokenizer, the text encoders (class,
config, dtype, a weight fingerprint), ``clip_skip`` and the family's way of combining the
encoders. A second run on the same captions and encoder, a resumed run and every rank of a DDP
run find them there and encode nothing.

Shared the way the latent cache is (``core.train.data.shared_cache``): caption ``n`` belongs to rank
``n mod world``, cached or not; each rank encodes what of its share is missing, all wait once
at a barrier, then every rank reads the whole set into memory, or with
``settings.cache_text_encoder_outputs_to_disk`` keeps only the files' paths and reads each batch's
entries from them (a T5-XXL caption at 512 tokens is 4 MiB in bf16: ten thousand captions must not
sit in RAM on every rank). Floating-point tensors are stored in the run's weight dtype when that is
bf16 or fp16 (half the size of fp32), in fp32 otherwise.

An entry is the family's text conditioning of one caption as named tensors
(``TextEmbeddings.named``: ``hidden_states``, and ``pooled``, ``attention_mask``,
``position_ids`` where the family has them), so a family whose encoders return other tensors
caches them without a change here. A row with an attention mask is stored at its caption's own
length and a batch padded to its longest caption (``core.families.embeddings.trim_row``,
:func:`stack_rows`): an LLM's outputs cost the cache what the caption needs, not the token limit.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from core.atomic import write_atomic
from core.families.embeddings import TOKEN_NAMES, TextEmbeddings, trim_row
from core.train.data.items import CacheNotValid, distinct_captions, text_cache_blocker
from core.train.data.latent_cache import add_weight_sample
from core.train.data.shared_cache import fill_shared

log = logging.getLogger(__name__)

#: One caption's named tensors (``TextEmbeddings.named`` of one row), on the CPU.
Entry = dict[str, Any]
#: Part of every entry's name: files of an older layout are not found (and are encoded again) rather than misread.
FORMAT = "named-2"


def default_cache_dir() -> Path:
    """``<user cache dir>/text`` (``core.userdirs``: ``$XDG_CACHE_HOME/sdtui`` on Linux)."""
    from core.userdirs import cache_dir

    return cache_dir() / "text"


class TextCache:
    """Text-encoder outputs per caption (named tensors) on the CPU, in memory (``entries``) or as
    files read when a batch needs them (``files``); ``encoded``/``reused`` count this rank's share."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.files: dict[str, Path] = {}
        self.encoded = 0
        self.reused = 0

    def __contains__(self, caption: str) -> bool:
        return caption in self.entries or caption in self.files

    def __len__(self) -> int:
        return len(self.entries) + len(self.files)

    def entry(self, caption: str) -> Entry:
        """The named tensors of one caption, read from its file when it is not held in memory."""
        if caption in self.entries:
            return self.entries[caption]
        path = self.files[caption]
        found = read_entry(path)
        if found is None:
            raise RuntimeError(f"the text cache file {path} was damaged while this run read it (another run writing the same cache?); start the run again to encode it anew")
        return found

    def lookup(self, captions: Sequence[str]) -> Any:
        """The stacked :class:`core.families.embeddings.TextEmbeddings` of ``captions``."""
        return TextEmbeddings.from_named(self.stacked(captions))

    def stacked(self, captions: Sequence[str]) -> dict[str, Any]:
        """The named tensors of ``captions``, each stacked over them (what a batch carries)."""
        return stack_rows([self.entry(c) for c in captions])


def stack_rows(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The named tensors of several captions stacked over them; rows with an ``attention_mask``
    and different lengths are padded with zeros (mask 0) to the longest."""
    names = list(rows[0])
    longest = max(int(r["attention_mask"].shape[0]) for r in rows) if "attention_mask" in rows[0] else 0
    out = {}
    for name in names:
        tensors = [r[name] for r in rows]
        if longest and name in TOKEN_NAMES and any(t.shape[0] != longest for t in tensors):
            tensors = [torch.cat([t, t.new_zeros(longest - t.shape[0], *t.shape[1:])]) for t in tensors]
        out[name] = torch.stack(tensors)
    return out


def encoders_fingerprint(encoders: Sequence[Any], clip_skip: int, family: str) -> str:
    """What makes one set of text encoders' outputs differ from another's: the family (how it joins
    its encoders' outputs), class, config, dtype, a weight sample."""
    digest = hashlib.sha1(f"{clip_skip}|{family}|{FORMAT}".encode())
    for encoder in encoders:
        config = getattr(encoder, "config", None)
        fields = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
        digest.update(type(encoder).__name__.encode())
        digest.update(json.dumps({k: v for k, v in fields.items() if not k.startswith("_")}, sort_keys=True, default=str).encode())
        add_weight_sample(digest, encoder)
    return digest.hexdigest()[:16]


def entry_path(folder: Path, token_ids: Sequence[Any], tag: str) -> Path:
    """The cache file of one caption, from its token ids (one row per tokenizer) and the encoders' ``tag``."""
    digest = hashlib.sha1(tag.encode())
    for ids in token_ids:
        digest.update(ids.to(torch.int64).numpy().tobytes())
    name = digest.hexdigest()
    return folder / name[:2] / f"{name}.safetensors"


def write_entry(path: Path, entry: Entry) -> None:
    """One cache file, written atomically (no fsync: a file a crash lost is simply encoded again)."""
    from safetensors.torch import save

    write_atomic(path, save({name: tensor.contiguous() for name, tensor in entry.items()}), durable=False)


def read_entry(path: Path) -> Entry | None:
    """One cache file's named tensors; None when it is damaged (it is then encoded again)."""
    from safetensors.torch import load

    try:
        tensors = load(path.read_bytes())  # copied into memory: a mapped file truncated later would crash with SIGBUS
        TextEmbeddings.from_named(tensors)  # ValueError for names that are no text conditioning
        if not all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point()):
            raise ValueError("it holds values that are not finite")
        return tensors
    except Exception as exc:  # noqa: BLE001 - any bytes in a cache file: encode the caption again
        log.warning("ignoring the damaged text cache file %s: %s", path, exc)
        return None


def cache_text_outputs(
    components: Any,
    train_data: Any,
    device: Any,
    dtype: Any,
    folder: str | Path | None = None,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    in_memory: bool = True,
) -> TextCache:
    """Encode every distinct caption (the empty one too with caption dropout) not cached yet, this rank's share.

    ``folder`` is the shared cache folder (``None``: memory only, one process). ``barrier`` is
    called once between encoding and reading when ``world`` > 1; ``in_memory`` False keeps only the
    files' paths (with a folder) and reads each batch's entries from them. ``dtype`` is the run's
    weight dtype: the entries are stored in it when it is bf16 or fp16, in fp32 otherwise. ``progress(done, total)`` follows
    the captions of this rank's share looked after (``done`` 0 first, as the latent cache reports). Raises :class:`core.train.data.items.CacheNotValid`
    when the captions change every step. Sets ``train_data.text_cache`` and returns it.
    """
    from core.settings import SETTINGS
    from core.train.model.text import encode_text, tokenize

    blocker = text_cache_blocker(train_data.settings)
    if blocker:
        raise CacheNotValid(blocker)
    if folder is None and world > 1:
        raise ValueError("a text cache shared by several processes needs a folder")
    clip_skip = int(train_data.settings.get("clip_skip", SETTINGS["clip_skip"].default))
    captions = distinct_captions(train_data)
    for encoder in components.text_encoders:
        encoder.to(device=device, dtype=dtype)
    root = Path(folder) if folder is not None else None
    ids = tokenize(components, captions) if captions else []
    tag = encoders_fingerprint(components.text_encoders, clip_skip, components.family) if root is not None else ""
    paths = [entry_path(root, [t[n] for t in ids], tag) if root is not None else None for n in range(len(captions))]
    stored = dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32
    cache = TextCache()
    share = len(range(rank, len(captions), world))
    if progress is not None:
        progress(0, share)

    def reuse(n: int) -> Entry | None:
        path = paths[n]
        found = read_entry(path) if path is not None and path.is_file() else None
        if found is not None and path is not None and not in_memory:
            cache.files[captions[n]] = path
        elif found is not None:
            cache.entries[captions[n]] = found
        return found

    def make(mine: list[int]) -> None:
        with torch.no_grad():
            for start in range(0, len(mine), batch_size):
                chunk = mine[start : start + batch_size]
                out = encode_text(components, [t[chunk] for t in ids], clip_skip=clip_skip)
                named = out.named()
                for row, n in enumerate(chunk):
                    entry = trim_row({name: t[row].to("cpu", stored) if t.is_floating_point() else t[row].to("cpu") for name, t in named.items()})
                    cache.encoded += 1
                    path = paths[n]
                    if path is not None:
                        write_entry(path, entry)
                    if path is not None and not in_memory:
                        cache.files[captions[n]] = path
                    else:
                        cache.entries[captions[n]] = entry
                if progress is not None:
                    progress(share - len(mine) + start + len(chunk), share)

    def adopt(n: int) -> None:
        if captions[n] in cache:
            return
        path = paths[n]
        if path is not None and not in_memory and path.is_file():
            cache.files[captions[n]] = path  # checked when a batch reads it
            return
        found = read_entry(path) if path is not None else None
        if found is None:
            raise RuntimeError(
                f"the text cache file {path} does not read back after the process that owns it wrote it (another run writing the same cache?); start the run again to encode it anew"
            )
        cache.entries[captions[n]] = found

    cache.reused = fill_shared(range(len(captions)), rank, world, barrier, make, adopt, reuse)
    train_data.text_cache = cache
    return cache
