"""The trainer's data: items from the run config's subsets, bucketed batches, loading and caches.

* :func:`build_items` scans every ``[[dataset.subsets]]`` folder (read-only) with the shared
  scanner and assigns each image to a bucket with the shared bucket code.
* :func:`batches_for_epoch` cuts an epoch into this rank's batches with the shared schedule
  maths, so the planner's step counts are what the loader yields.
* :class:`BatchDataset` / :func:`make_loader` load one whole batch per index (all images of a
  batch share a bucket): resize to cover, crop (center or random), optional flip, pixels in
  [-1, 1], caption shuffle / keep tokens / dropout, the size and crop ids a family may condition on. A corrupt
  image is skipped with a warning; a batch with no usable image comes back as ``None``.
* The caches, shared across runs and ranks, are ``core.train.data.latent_cache`` (VAE latents) and
  ``core.train.data.text_cache`` (text-encoder outputs).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.config import section_of
from core.dataset.buckets import Bucket, bucket_selector, buckets_for
from core.dataset.scan import overlay_subsets, scan_dataset
from core.errors import UserError
from core.plan.schedule import epoch_batches, shard_batches
from core.settings import resolve, subset_settings
from core.train.data.captions import process_caption, setting, with_prefix_suffix
from core.train.data.examples import Example, load_example
from core.train.data.item import CLASS, INSTANCE, TrainItem
from core.train.masks import batch_masks, with_masks
from core.train.validation import split_items

if TYPE_CHECKING:
    from core.train.data.latent_cache import LatentCache
    from core.train.data.text_cache import TextCache

log = logging.getLogger(__name__)


class CacheNotValid(ValueError):
    """A cache was asked for although the settings make it wrong (the loop falls back)."""


@dataclass
class TrainData:
    """Everything the loop iterates: instance and class items, buckets and the per-bucket item lists.

    ``items_by_bucket`` maps each bucket to instance item indices, each repeated ``repeats``
    times: exactly what :func:`core.plan.schedule.epoch_batches` takes.
    """

    items: list[TrainItem]
    class_items: list[TrainItem]
    buckets: list[Bucket]
    items_by_bucket: dict[Bucket, list[int]]
    settings: dict[str, Any] = field(default_factory=dict)
    latents: LatentCache | None = None
    text_cache: TextCache | None = None
    #: The settings of each subset (its own flip_aug and caption options laid over [settings]).
    subset_settings: list[dict[str, Any]] = field(default_factory=list)
    #: The validation images ([validation] split or folder): never trained on.
    validation_items: list[TrainItem] = field(default_factory=list)
    #: True when the loss is masked (settings.alpha_mask or [dataset] mask_dir): every batch has ``masks``.
    masked: bool = False

    def settings_of(self, item: TrainItem) -> dict[str, Any]:
        """The settings ``item`` trains with: its subset's (generated class images: the run's)."""
        return self.subset_settings[item.subset] if 0 <= item.subset < len(self.subset_settings) else self.settings

    @property
    def items_per_epoch(self) -> int:
        """Σ images × repeats over the training subsets."""
        return sum(len(v) for v in self.items_by_bucket.values())

    def bucket_counts(self) -> dict[Bucket, int]:
        """Items per bucket in one epoch (what the planner's ``steps_per_epoch`` takes)."""
        return {b: len(v) for b, v in self.items_by_bucket.items()}


def _subsets_of(config: Any) -> list[dict[str, Any]]:
    if hasattr(config, "subsets"):
        return [dict(s) for s in config.subsets]
    return [dict(s) for s in config.get("dataset", {}).get("subsets", [])]


def _caption_extensions(config: Any, subset: Mapping[str, Any]) -> tuple[str, ...]:
    """Caption extensions to try for ``subset``: its own caption_extension, else run.toml's
    ``dataset.caption_extension``, first."""
    if hasattr(config, "caption_extensions_of"):
        return tuple(config.caption_extensions_of(subset))
    first = str(config.get("dataset", {}).get("caption_extension", ".txt")) if isinstance(config, Mapping) else ".txt"
    return tuple(dict.fromkeys((str(subset.get("caption_extension") or first), ".txt", ".caption")))


#: The per-subset options that keep a cache from being used when any subset turns them on.
_CACHE_BLOCKING_OPTIONS = ("flip_aug", "shuffle_caption")
#: The per-subset rates that do the same (the highest of the subsets counts).
_CACHE_BLOCKING_RATES = ("caption_dropout_rate", "caption_tag_dropout_rate")


def build_items(config: Any, settings: Mapping[str, Any]) -> TrainData:
    """Scan the config's subsets and bucket their images (the dataset is only read).

    ``config`` is a RunConfig (or a run.toml dict) with ``subsets`` of ``path``, ``repeats``,
    ``token``, ``is_reg``. A caption comes from the image's caption file, else the subset token.
    """
    settings = resolve("settings", settings)
    buckets = buckets_for(settings)
    select = bucket_selector(settings)
    items: list[TrainItem] = []
    class_items: list[TrainItem] = []
    subsets = _subsets_of(config)
    per_subset = [subset_settings(settings, subset) for subset in subsets]
    for index, subset in enumerate(subsets):
        folder = Path(str(subset.get("path", ""))).expanduser()
        if not folder.is_dir():
            raise UserError(f"The dataset folder {folder} does not exist; fix the path of this subset in [[dataset.subsets]] of run.toml.")
        extensions = _caption_extensions(config, subset)
        scan = scan_dataset(folder, resolution=int(settings["resolution"]), caption_extensions=extensions, bucket_settings=settings, use_cache=False)
        _warn_left_out(scan.problems)
        for found in overlay_subsets(scan, [subset]).subsets:
            token = found.token.strip()
            for image in found.images:
                caption = with_prefix_suffix((image.caption or "").strip() or token, per_subset[index])
                item = TrainItem(image.path, caption, image.width, image.height, select(image.width, image.height), found.repeats, found.is_reg, index)
                (class_items if found.is_reg else items).append(item)
    items, validation_items = split_items(config, items, settings, select)
    mask_dir = str(section_of(config, "dataset").get("mask_dir") or "")
    if mask_dir:
        items, validation_items = with_masks(mask_dir, items, validation_items)
    if not items:
        raise UserError("The training subsets in [[dataset.subsets]] of run.toml have no usable image; add png, jpg, webp or bmp images to them (sdtui scan DIR shows what is wrong).")
    by_bucket: dict[Bucket, list[int]] = {}
    for i, item in enumerate(items):
        by_bucket.setdefault(item.bucket, []).extend([i] * item.repeats)
    # the caches follow the widest view: one subset that flips or shuffles keeps them off
    widest = settings | {key: any(bool(p[key]) for p in per_subset) or bool(settings[key]) for key in _CACHE_BLOCKING_OPTIONS}
    widest |= {key: max([float(settings[key]), *(float(p[key]) for p in per_subset)]) for key in _CACHE_BLOCKING_RATES}
    return TrainData(
        items,
        class_items,
        buckets,
        by_bucket,
        widest,
        subset_settings=per_subset,
        validation_items=validation_items,
        masked=bool(mask_dir) or bool(settings["alpha_mask"]),
    )


def _warn_left_out(problems: Sequence[Any]) -> None:
    """One warning per image (or group of images) the scan left out (damaged, unreadable, empty), so the run's events show it."""
    for problem in problems:
        if problem.severity == "error" and (problem.count > 1 or Path(problem.path).is_file()):
            what = "images in" if problem.count > 1 else "image"
            log.warning("skipping %s %s: %s; %s", what, problem.path, problem.message, problem.fix)


def batches_for_epoch(train_data: TrainData, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's batches (lists of instance item indices) for ``epoch``, from the shared schedule code."""
    return shard_batches(epoch_batches(train_data.items_by_bucket, batch_size, seed, epoch), rank, world)


def class_batches_for_epoch(train_data: TrainData, batches: Sequence[Sequence[int]], seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Prior preservation: one class item per instance item of each batch, cycling a shuffled pool."""
    if not train_data.class_items:
        return [[] for _ in batches]
    pool = [i for i, item in enumerate(train_data.class_items) for _ in range(item.repeats)]
    random.Random(seed * 7_919 + epoch).shuffle(pool)
    width = max((len(b) for b in batches), default=0)
    return [[pool[((n * world + rank) * width + j) % len(pool)] for j in range(len(batch))] for n, batch in enumerate(batches)]


def latent_cache_blocker(settings: Mapping[str, Any]) -> str | None:
    """Why latents cannot be cached with these settings (random crop / flip), or None."""
    if setting(settings, "random_crop"):
        return "cached latents would freeze one crop, so random_crop trains from the images instead of the latent cache"
    if setting(settings, "flip_aug"):
        return "cached latents would freeze one orientation, so flip_aug trains from the images instead of the latent cache"
    return None


def text_cache_blocker(settings: Mapping[str, Any]) -> str | None:
    """Why text-encoder outputs cannot be cached with these settings, or None."""
    if setting(settings, "train_text_encoder"):
        return "the text encoder is trained, so its outputs change and cannot be cached"
    if setting(settings, "shuffle_caption"):
        return "shuffled captions differ every step, so text-encoder outputs cannot be cached"
    if float(setting(settings, "caption_tag_dropout_rate")) > 0:
        return "tag dropout changes the captions every step, so text-encoder outputs cannot be cached"
    return None


def distinct_captions(train_data: TrainData) -> list[str]:
    """Every caption the run can train on once (the empty one too when caption dropout is on)."""
    every = train_data.items + train_data.class_items + train_data.validation_items
    captions = list(dict.fromkeys(i.caption for i in every))
    if float(setting(train_data.settings, "caption_dropout_rate")) > 0 and "" not in captions:
        captions.append("")
    return captions


class BatchDataset(torch.utils.data.Dataset):
    """Index ``n`` → the collated batch ``batches[n]`` (plus its class images), or None if nothing loaded.

    A batch is a dict: ``pixel_values`` [B, 3, H, W] in [-1, 1] or ``latents`` [B, 4, h, w] when
    latents are cached; ``captions``; ``original_sizes``, ``crop_top_lefts``, ``target_sizes``
    ((height, width) / (top, left) per example, for a family runtime's extra conditioning); ``is_class`` (bool tensor:
    prior-preservation examples come after the instance ones); ``item_ids``; and
    ``text`` (the cached text conditioning as named tensors, ``TextEmbeddings.named``, stacked over
    the batch) when text outputs are cached and hold every caption of the batch (otherwise the
    loop encodes the captions).
    """

    def __init__(self, train_data: TrainData, batches: Sequence[Sequence[int]], seed: int, epoch: int, class_batches: Sequence[Sequence[int]] | None = None) -> None:
        self.data = train_data
        self.batches = [list(b) for b in batches]
        self.class_batches = [list(b) for b in class_batches] if class_batches is not None else [[] for _ in self.batches]
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def _example(self, kind: str, index: int, bucket: Bucket, rng: random.Random) -> tuple[str, Any, Example] | None:
        item = (self.data.items if kind == INSTANCE else self.data.class_items)[index]
        settings = self.data.settings_of(item)
        caption = process_caption(item.caption, settings, rng)
        cache = self.data.latents
        try:
            if cache is not None:
                key = (kind, index, bucket)
                if key not in cache:
                    log.warning("skipping %s: it has no cached latents (it could not be read when caching)", item.path)
                    return None
                latents, size, crop = cache.get(key)
                return caption, latents, Example(latents, size, crop, (bucket[1], bucket[0]), cache.mask(key))
            flip = bool(setting(settings, "flip_aug")) and rng.random() < 0.5
            example = load_example(
                item.path,
                bucket,
                bool(setting(settings, "random_crop")),
                flip,
                rng,
                item.mask,
                kind == INSTANCE and bool(setting(self.data.settings, "alpha_mask")),  # class images train whole, as when cached
            )
            return caption, example.pixels, example
        except Exception as exc:  # noqa: BLE001 - a corrupt or vanished image must not stop training
            log.warning("skipping unreadable image %s: %s", item.path, exc)
            return None

    def __getitem__(self, n: int) -> dict[str, Any] | None:
        batch = self.batches[n]
        bucket = self.data.items[batch[0]].bucket
        rng = random.Random(f"{self.seed}:{self.epoch}:{n}")
        loaded = []
        for kind, indices in ((INSTANCE, batch), (CLASS, self.class_batches[n])):
            for index in indices:
                got = self._example(kind, index, bucket, rng)
                if got is not None:
                    loaded.append((kind, index, *got))
        if not any(kind == INSTANCE for kind, *_ in loaded):
            return None
        out: dict[str, Any] = {
            "latents" if self.data.latents is not None else "pixel_values": torch.stack([t for *_, t, _ in loaded]),
            "captions": [c for _, _, c, _, _ in loaded],
            "original_sizes": [e.original_size for *_, e in loaded],
            "crop_top_lefts": [e.crop_top_left for *_, e in loaded],
            "target_sizes": [e.target_size for *_, e in loaded],
            "is_class": torch.tensor([kind == CLASS for kind, *_ in loaded]),
            "item_ids": [index for _, index, *_ in loaded],
        }
        if self.data.masked:
            out["masks"] = batch_masks([e for *_, e in loaded], out["latents" if self.data.latents is not None else "pixel_values"])
        if self.data.text_cache is not None and all(c in self.data.text_cache for c in out["captions"]):
            out["text"] = self.data.text_cache.stacked(out["captions"])
        return out


def _as_is(batch: Any) -> Any:
    return batch


def make_loader(
    train_data: TrainData,
    batches: Sequence[Sequence[int]],
    seed: int,
    epoch: int,
    workers: int = 0,
    class_batches: Sequence[Sequence[int]] | None = None,
    pin_memory: bool | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader yielding the collated ``batches`` in order (``None`` for a batch with no usable image)."""
    dataset = BatchDataset(train_data, batches, seed, epoch, class_batches)
    workers = min(int(workers), len(dataset)) if len(dataset) else 0
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_is,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=False,
    )
