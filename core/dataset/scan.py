"""Read-only scan of a kohya-style dataset folder: subsets, images, captions, buckets, problems.

Layouts understood:

* a dataset folder of ``<repeats>_<token words>`` subfolders (``40_sks dog``);
* one such subfolder passed directly (its own name carries the repeat prefix);
* a plain folder of images (one subset, 1 repeat, with a note on how to add a prefix).
* a class folder inside the dataset (``reg/1_dog``, the README's layout): recognised by its
  ``<repeats>_<token>`` subfolders, not trained, and offered as the class folder (``class_folders``).

The scan only reads. Image headers are cached by path, size and mtime in
``scan/`` of the user's cache folder (``${XDG_CACHE_HOME:-~/.cache}/sdtui/scan/``), never inside
the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from stat import S_ISREG
from typing import Any

from core import userdirs
from core.atomic import read_json, write_atomic
from core.dataset.buckets import BUCKET_KEYS, Bucket, assign_bucket, bucket_counts, buckets_for
from core.dataset.images import FORMAT_NAMES, IMAGE_EXTENSIONS, NOT_FILE, ImageHeader, read_header
from core.dataset.problems import Problem, group_problems, sort_problems
from core.errors import UserError
from core.settings import SUBSET_KEYS, resolve

REPEAT_PREFIX = re.compile(r"^(\d+)_(.*)$")
#: Images scaled up by more than this to fill their bucket are named in a warning (blurry in training).
UPSCALE_NAMED = 1.5
#: At most this many such images are named (then a count).
UPSCALE_LISTED = 5
#: Images that lose more than this share of their width or height to their bucket's crop are named in a warning.
CROP_NAMED = 0.25
_CACHE_VERSION = 3
_ENDS = 8192


@dataclass(frozen=True)
class ImageEntry:
    """One usable image: its size and format from the header, and its caption if any."""

    path: str
    width: int
    height: int
    format: str
    caption: str | None = None
    caption_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON-able dict."""
        return {
            "path": self.path, "width": self.width, "height": self.height, "format": self.format,
            "caption": self.caption, "caption_path": self.caption_path,
        }


@dataclass(frozen=True)
class Subset:
    """One folder of images with its repeat count and fallback caption token.

    ``buckets`` counts images (not × repeats) per (width, height) bucket of the scan.
    """

    path: str
    name: str
    repeats: int
    token: str
    is_reg: bool
    images: list[ImageEntry] = field(default_factory=list)
    captions_found: int = 0
    captions_missing: int = 0
    min_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None
    buckets: dict[Bucket, int] = field(default_factory=dict)

    @property
    def items_per_epoch(self) -> int:
        """Images × repeats."""
        return len(self.images) * self.repeats

    @property
    def captions_label(self) -> str:
        """Captions as the TUI and the CLI show them: found of all images, ``3/4``."""
        return f"{self.captions_found}/{self.captions_found + self.captions_missing}"

    def to_config(self) -> dict[str, Any]:
        """The subset as a run.toml ``[[dataset.subsets]]`` table."""
        return {"path": self.path, "repeats": self.repeats, "token": self.token, "is_reg": self.is_reg}

    def to_json(self, include_images: bool = False) -> dict[str, Any]:
        """The subset as a JSON-able dict (image list only when asked)."""
        data: dict[str, Any] = {
            "path": self.path, "name": self.name, "repeats": self.repeats, "token": self.token,
            "is_reg": self.is_reg, "images": len(self.images), "items_per_epoch": self.items_per_epoch,
            "captions": self.captions_found, "captions_found": self.captions_found,
            "captions_missing": self.captions_missing,
            "min_size": list(self.min_size) if self.min_size else None,
            "max_size": list(self.max_size) if self.max_size else None,
            "buckets": _bucket_json(self.buckets),
        }
        if include_images:
            data["image_list"] = [image.to_json() for image in self.images]
        return data


@dataclass(frozen=True)
class DatasetScan:
    """The result of :func:`scan_dataset`."""

    root: str
    subsets: list[Subset]
    problems: list[Problem]
    resolution: int = 512
    buckets: list[Bucket] = field(default_factory=list)
    reg_root: str | None = None
    #: Folders inside the dataset laid out as a class folder (``reg/1_dog``), not given as the class folder.
    class_folders: tuple[str, ...] = ()

    @property
    def images(self) -> int:
        """Usable training images (regularisation images not counted)."""
        return sum(len(s.images) for s in self.subsets if not s.is_reg)

    @property
    def reg_images(self) -> int:
        """Usable regularisation / class images."""
        return sum(len(s.images) for s in self.subsets if s.is_reg)

    @property
    def items_per_epoch(self) -> int:
        """Σ images × repeats over the training (non-reg) subsets."""
        return sum(s.items_per_epoch for s in self.subsets if not s.is_reg)

    @property
    def has_errors(self) -> bool:
        """True when a problem of severity ``error`` was found."""
        return any(p.severity == "error" for p in self.problems)

    def blocking_problem(self) -> Problem | None:
        """The problem that stops training (no usable training image, a class folder without one), or None.

        Every other error only leaves a file or a subset out of the run: a warning, not a blocker.
        """
        if self.images and not (self.reg_root and not self.reg_images):
            return None
        wanted = self.root if not self.images else self.reg_root
        found = [p for p in self.problems if p.severity == "error" and p.path == wanted and "no usable" in p.message]
        return found[0] if found else Problem("error", self.root, "the dataset has no usable training image", "add png, jpg, webp or bmp images")

    def blocks(self, problem: Problem) -> bool:
        """True for the problem that stops training; False for one that only leaves something out."""
        return problem == self.blocking_problem()

    def bucket_counts(self, buckets: Sequence[Bucket] | None = None) -> dict[Bucket, int]:
        """Items (image × repeats) per bucket for one epoch over the training subsets."""
        chosen = list(buckets) if buckets is not None else self.buckets
        sizes = ((i.width, i.height, s.repeats) for s in self.subsets if not s.is_reg for i in s.images)
        return bucket_counts(sizes, chosen)

    def with_repeats(self, repeats: Mapping[str | os.PathLike[str], int]) -> DatasetScan:
        """A copy with the repeats of some subsets changed; keys are subset paths or names."""
        by_key = {s.path: s for s in self.subsets} | {s.name: s for s in self.subsets}
        changed: dict[str, int] = {}
        for key, value in repeats.items():
            text = str(key)
            subset = by_key.get(text) or by_key.get(str(Path(text).expanduser().resolve()))
            if subset is None:
                known = ", ".join(s.name for s in self.subsets)
                raise UserError(f"there is no subset '{text}' in this dataset; use one of: {known}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"repeats of subset '{subset.name}' must be a whole number of at least 1, not {value!r}")
            changed[subset.path] = value
        subsets = [replace(s, repeats=changed.get(s.path, s.repeats)) for s in self.subsets]
        return replace(self, subsets=subsets)

    def subset_configs(self) -> list[dict[str, Any]]:
        """The subsets as run.toml ``[[dataset.subsets]]`` tables (the subsets with images)."""
        return [s.to_config() for s in self.subsets if s.images]

    def to_json(self, include_images: bool = False) -> dict[str, Any]:
        """What ``sdtui scan --json`` prints."""
        return {
            "root": self.root,
            "reg_root": self.reg_root,
            "class_folders": list(self.class_folders),
            "resolution": self.resolution,
            "images": self.images,
            "reg_images": self.reg_images,
            "items_per_epoch": self.items_per_epoch,
            "has_errors": self.has_errors,
            "subsets": [s.to_json(include_images) for s in self.subsets],
            "bucket_counts": _bucket_json(self.bucket_counts()),
            "problems": [p.to_json() for p in self.problems],
        }


def scan_dataset(
    path: str | os.PathLike[str],
    reg_path: str | os.PathLike[str] | None = None,
    resolution: int = 512,
    caption_extensions: Sequence[str] = (".txt", ".caption"),
    bucket_settings: Mapping[str, Any] | None = None,
    use_cache: bool = True,
) -> DatasetScan:
    """Scan a kohya-style dataset (and an optional regularisation folder) without writing to it.

    ``bucket_settings`` may hold ``enable_bucket``, ``min_bucket_reso``, ``max_bucket_reso`` and
    ``bucket_reso_steps`` (run.toml [settings] names); missing ones take their defaults.
    """
    root = _existing_folder(path, "dataset folder")
    reg_root = _existing_folder(reg_path, "regularisation folder") if reg_path is not None else None
    extensions = _caption_extensions(caption_extensions)
    buckets = _make_buckets(resolution, bucket_settings)
    problems: list[Problem] = []
    subsets: list[Subset] = []
    caches: list[_HeaderCache] = []
    stats: dict[str, tuple[int, int]] = {}
    class_folders: list[str] = []
    for folder, is_reg in ((root, False), (reg_root, True)):
        if folder is None:
            continue
        cache = _HeaderCache.open(folder) if use_cache else _HeaderCache(None)
        caches.append(cache)
        walker = _Walker(cache, extensions, buckets, resolution, problems, stats)
        subsets.extend(walker.scan_root(folder, is_reg))
        class_folders += [path for path in walker.class_folders if not is_reg and Path(path).resolve() != reg_root]
    for path in class_folders:
        problems.append(Problem(
            "warning", path, "this folder holds <repeats>_<token> subfolders, so it looks like a class (regularisation) folder; it is not trained",
            f"use it as the class folder: --reg '{path}'",
        ))
    _report_duplicates(subsets, stats, caches, problems)
    for cache in caches:
        cache.save()
    if not any(s.images for s in subsets if not s.is_reg):
        problems.append(Problem(
            "error", str(root), "the dataset has no usable training image",
            "put png, jpg, webp or bmp images in <repeats>_<token> subfolders such as '10_sks dog'",
        ))
    if reg_root is not None and not any(s.images for s in subsets if s.is_reg):
        problems.append(Problem(
            "error", str(reg_root), "the regularisation folder has no usable image",
            "add class images to it or leave the regularisation folder out",
        ))
    return DatasetScan(str(root), subsets, sort_problems(group_problems(problems)), resolution, buckets, str(reg_root) if reg_root else None, tuple(class_folders))


def scan_config(config: Any) -> DatasetScan:
    """One scan over a run config's ``[[dataset.subsets]]`` folders, with the config's repeats,
    tokens and reg flags; UserError when a training subset has no usable image.

    ``config`` is a RunConfig (``subsets``, ``settings``, ``caption_extensions_of``: a subset's
    own caption extension first).
    """
    settings = config.settings
    scans = []
    for entry in config.subsets:
        folder = Path(str(entry["path"])).expanduser()
        if not folder.is_dir():
            raise UserError(f"the dataset folder {folder} does not exist; fix its [[dataset.subsets]] path in the run config")
        scan = scan_dataset(
            folder, resolution=int(settings["resolution"]), caption_extensions=config.caption_extensions_of(entry),
            bucket_settings={k: settings[k] for k in BUCKET_KEYS},
        )
        if not scan.images and not entry.get("is_reg"):
            problem = next((p for p in scan.problems if p.severity == "error"), None)
            why = f"{problem.message}; {problem.fix}" if problem else "add png, jpg, webp or bmp images"
            raise UserError(f"the dataset folder {folder} has no usable image ({why})")
        scans.append(overlay_subsets(scan, [entry]))
    if not scans:
        raise UserError("the run config has no [[dataset.subsets]]; add the dataset's subset folders")
    root = os.path.commonpath([str(Path(str(s["path"])).expanduser().resolve()) for s in config.subsets])
    return replace(
        scans[0], root=root,
        subsets=[s for scan in scans for s in scan.subsets],
        problems=[p for scan in scans for p in scan.problems],
    )


def overlay_subsets(scan: DatasetScan, entries: Sequence[Mapping[str, Any]]) -> DatasetScan:
    """The scan restricted to run.toml's ``[[dataset.subsets]]``: each scanned subset in (or at)
    an entry's folder takes that entry's repeats, token (when it has one) and is_reg.

    The one place run.toml's subset values are laid over a scan (planner, scan_config, trainer);
    an entry whose folder holds no scanned subset is a UserError.
    """
    chosen: list[Subset] = []
    for entry in entries:
        values = resolve("subset", {k: v for k, v in entry.items() if k in SUBSET_KEYS})
        folder = Path(values["path"]).expanduser().resolve()
        inside = [s for s in scan.subsets if Path(s.path).resolve() == folder or Path(s.path).resolve().is_relative_to(folder)]
        if not inside:
            raise UserError(
                f"the run config's subset {folder} is not in the scanned dataset {scan.root}; fix [[dataset.subsets]] path or scan the right folder"
            )
        chosen += [
            replace(s, repeats=int(values["repeats"]), is_reg=bool(values["is_reg"]), token=str(values["token"] or s.token))
            for s in inside
        ]
    return replace(scan, subsets=chosen)


def _existing_folder(path: str | os.PathLike[str], what: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(f"{what} {folder} does not exist; check the path (it should hold <repeats>_<token> subfolders of images)")
    if not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder; pass the folder that holds the images")
    return folder.resolve()


def _caption_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    result = tuple(("" if e.startswith(".") else ".") + e.lower() for e in extensions if e)
    if not result:
        raise UserError("no caption extension given; use e.g. .txt or .caption")
    bad = [e for e in result if e in IMAGE_EXTENSIONS]
    if bad:
        raise UserError(f"caption extension {bad[0]} is an image extension; use e.g. .txt or .caption")
    return result


def _make_buckets(resolution: int, settings: Mapping[str, Any] | None) -> list[Bucket]:
    bucket_settings = {k: v for k, v in (settings or {}).items() if k in BUCKET_KEYS}
    return buckets_for(resolve("settings", bucket_settings, {"resolution": resolution}))


def _bucket_json(counts: Mapping[Bucket, int]) -> dict[str, int]:
    return {f"{w}x{h}": n for (w, h), n in sorted(counts.items())}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class _Walker:
    """Walks the folders of one root and collects subsets and problems."""

    def __init__(
        self, cache: _HeaderCache, extensions: tuple[str, ...], buckets: list[Bucket], resolution: int,
        problems: list[Problem], stats: dict[str, tuple[int, int]],
    ) -> None:
        self.cache = cache
        self.extensions = extensions
        self.buckets = buckets
        self.resolution = resolution
        self.problems = problems
        self.stats = stats
        self.bucket_of: dict[tuple[int, int], Bucket] = {}
        #: Folders without a repeat prefix that hold ``<repeats>_<token>`` subfolders (a class folder's layout).
        self.class_folders: list[str] = []
        self.root = Path("/")  # the real root being scanned, set by scan_root

    def problem(self, severity: str, path: str | Path, message: str, fix: str) -> None:
        self.problems.append(Problem(severity, str(path), message, fix))

    def scan_root(self, root: Path, is_reg: bool) -> list[Subset]:
        self.root = root
        own = REPEAT_PREFIX.match(root.name)
        if own and int(own.group(1)) >= 1:
            return [self.scan_subset(root, int(own.group(1)), own.group(2), is_reg)]
        entries = _listing(root)
        folders = [e for e in entries if e.is_dir()]
        prefixed = []
        for entry in folders:
            match = REPEAT_PREFIX.match(entry.name)
            if match and int(match.group(1)) >= 1:
                prefixed.append((entry, int(match.group(1)), match.group(2)))
                self.report_linked_folder(entry)
            elif match:
                self.problem("warning", entry.path, "the repeat count 0 means this folder would never be seen, so it is skipped",
                             f"rename it to e.g. '1_{match.group(2)}' to train on it")
            elif _holds_subsets(Path(entry.path)):
                self.class_folders.append(entry.path)
            else:
                self.problem("warning", entry.path, "the folder has no repeat prefix and is skipped",
                             f"rename it to e.g. '10_{entry.name}' (<repeats>_<token>) to train on it")
        files = [e for e in entries if not e.is_dir()]
        if prefixed:
            loose = [e for e in files if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
            if loose:
                self.problem("warning", root, f"{_plural(len(loose), 'image')} directly in the dataset folder {'is' if len(loose) == 1 else 'are'} in no subset and ignored",
                             "move them into a <repeats>_<token> subfolder such as '10_sks dog'")
            return [self.scan_subset(Path(e.path), repeats, token, is_reg) for e, repeats, token in prefixed]
        if not files:
            return []
        self.problem("info", root, "the folder has no <repeats>_<token> subfolders, so it is one subset seen once per epoch",
                     f"to set repeats, rename the folder to e.g. '10_{root.name}' or move the images into such a subfolder")
        return [self.scan_subset(root, 1, "", is_reg, entries)]

    def scan_subset(self, folder: Path, repeats: int, token: str, is_reg: bool, entries: list[os.DirEntry[str]] | None = None) -> Subset:
        captions: dict[str, dict[str, os.DirEntry[str]]] = {}
        candidates: list[os.DirEntry[str]] = []
        for entry in entries if entries is not None else _listing(folder):
            if entry.is_dir():
                if entries is None:
                    self.problem("warning", entry.path, "folders inside a subset are not scanned",
                                 "move its images up into the subset or make it its own <repeats>_<token> folder in the dataset folder")
                continue
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in self.extensions:
                captions.setdefault(stem, {})[suffix.lower()] = entry
            else:
                candidates.append(entry)
        images: list[ImageEntry] = []
        used_stems: set[str] = set()
        missing = 0
        small: list[ImageEntry] = []
        cropped: list[ImageEntry] = []
        counts: dict[Bucket, int] = {}
        home = os.path.realpath(folder)
        for entry in candidates:
            self.report_name_and_place(entry, home)
            header = self.header(entry)
            stem, suffix = os.path.splitext(entry.name)
            if not header.ok:
                self.report_bad_file(entry, header, suffix.lower() in IMAGE_EXTENSIONS)
                used_stems.add(stem)
                continue
            used_stems.add(stem)
            caption, caption_path = self.caption(captions.get(stem, {}))
            missing += caption is None
            image = ImageEntry(entry.path, header.width, header.height, header.format or "", caption, caption_path)
            images.append(image)
            bucket = self.bucket_of.get((image.width, image.height))
            if bucket is None:
                bucket = self.bucket_of[image.width, image.height] = assign_bucket(image.width, image.height, self.buckets)
            counts[bucket] = counts.get(bucket, 0) + 1
            if image.width < bucket[0] or image.height < bucket[1]:
                small.append(image)
            if crop_share(image, bucket) > CROP_NAMED:
                cropped.append(image)
        for stem, found in sorted(captions.items()):
            if stem not in used_stems:
                for entry in found.values():
                    self.problem("warning", entry.path, "caption file without an image beside it",
                                 f"remove it, or add the image {stem}.png next to it")
        self.report_subset(folder, token, images, missing, small)
        self.report_crops(folder, cropped)
        smallest = min(images, key=lambda i: (i.width * i.height, i.width), default=None)
        largest = max(images, key=lambda i: (i.width * i.height, i.width), default=None)
        return Subset(
            str(folder), folder.name, repeats, token, is_reg, images, len(images) - missing, missing,
            (smallest.width, smallest.height) if smallest else None, (largest.width, largest.height) if largest else None, counts,
        )

    def inside(self, path: str, home: str) -> bool:
        """Whether the real ``path`` lies in the dataset folder or in ``home`` (its subset's real folder)."""
        real = Path(path)
        return real.is_relative_to(self.root) or real.is_relative_to(home)

    def report_linked_folder(self, entry: os.DirEntry[str]) -> None:
        """Say so when a subset folder is a symlink to a folder outside the dataset folder (it is still scanned)."""
        real = os.path.realpath(entry.path)
        if entry.is_symlink() and not self.inside(real, str(self.root)):
            self.problem("warning", entry.path, f"the subset is a symlink to {real}, outside the dataset folder; its images are read from there",
                         "nothing to do if you linked it on purpose; otherwise remove the link")
        if "\n" in entry.name or "\r" in entry.name:
            self.problem("warning", entry.path, "the folder name holds a line break, which line-based tools (kohya's lists, shell loops) split",
                         "rename the folder without the line break")

    def report_name_and_place(self, entry: os.DirEntry[str], home: str) -> None:
        """Note an image symlinked from outside the dataset folder and a file name with a line break."""
        if entry.is_symlink() and not self.inside(os.path.realpath(entry.path), home):
            self.problem("info", entry.path, "a symlink to a file outside the dataset folder, used from there",
                         "nothing to do if you linked it on purpose; otherwise copy the image into the dataset or remove the link")
        if "\n" in entry.name or "\r" in entry.name:
            self.problem("warning", entry.path, "the file name holds a line break, which line-based tools (kohya's lists, shell loops) split",
                         "rename the file without the line break")

    def header(self, entry: os.DirEntry[str]) -> ImageHeader:
        try:
            stat = entry.stat()
        except OSError as exc:
            return ImageHeader(None, problem="unreadable", detail=f"it cannot be read ({exc.strerror or exc})")
        if not S_ISREG(stat.st_mode):
            return ImageHeader(None, problem="not_file", detail=NOT_FILE)
        self.stats[entry.path] = (stat.st_size, stat.st_mtime_ns)
        return self.cache.header(entry.path, stat.st_size, stat.st_mtime_ns)

    def caption(self, found: Mapping[str, os.DirEntry[str]]) -> tuple[str | None, str | None]:
        for extension in self.extensions:
            entry = found.get(extension)
            if entry is None:
                continue
            if not entry.is_file():
                self.problem("warning", entry.path, f"the caption file is not used: {NOT_FILE}", "replace it with a plain text file")
                continue
            try:
                with open(entry.path, encoding="utf-8-sig") as handle:
                    return handle.read().strip(), entry.path
            except UnicodeDecodeError:
                self.problem("warning", entry.path, "the caption is not UTF-8 text, so it is not used", "save it as UTF-8")
            except OSError as exc:
                self.problem("warning", entry.path, f"the caption cannot be read ({exc.strerror or exc})", "make it readable (chmod a+r)")
        return None, None

    def report_bad_file(self, entry: os.DirEntry[str], header: ImageHeader, named_as_image: bool) -> None:
        if header.problem == "not_image":
            if named_as_image:
                self.problem("error", entry.path, f"named like an image but {header.detail}; it is left out",
                             "re-export the image from its original or remove it")
            else:
                self.problem("info", entry.path, "not an image (png, jpg, webp or bmp), ignored",
                             "move it out of the dataset if it does not belong there")
        elif header.problem == "unreadable":
            self.problem("error", entry.path, f"{header.detail}; it is left out", "make it readable (chmod a+r) or remove it")
        elif header.problem == "not_file":
            self.problem("error" if named_as_image else "info", entry.path, f"{header.detail}; it is left out unread",
                         "move it out of the dataset folder")
        elif header.problem == "empty":
            self.problem("error", entry.path, f"{header.detail}; it is left out", "copy the image again from its original or remove it")
        elif header.problem == "too_large":
            self.problem("error", entry.path, f"{header.detail}; it is left out", "downscale it (e.g. to 4096 pixels on the long side) or remove it")
        else:
            kind = FORMAT_NAMES.get(header.format or "", "image")
            self.problem("error", entry.path, f"{header.detail}; this {kind} is left out",
                         "copy the image again from its original or remove it")

    def report_subset(self, folder: Path, token: str, images: list[ImageEntry], missing: int, small: list[ImageEntry]) -> None:
        if not images:
            self.problem("error", folder, "the subset has no usable image",
                         "add png, jpg, webp or bmp images to it or remove the folder")
            return
        if missing:
            if token:
                self.problem("info", folder, f"{_plural(missing, 'image')} without a caption file will be captioned '{token}'",
                             f"add {self.extensions[0]} files beside the images to caption them individually")
            else:
                self.problem("warning", folder, f"{_plural(missing, 'image')} without a caption file will train with an empty caption",
                             f"add {self.extensions[0]} captions or name the folder '<repeats>_<token>' to give them a token")
        if small:
            factors = sorted(((upscale_factor(i, self.bucket_of[i.width, i.height]), i) for i in small), key=lambda f: -f[0])
            much = [(f, i) for f, i in factors if f > UPSCALE_NAMED]
            slight = len(factors) - len(much)
            if much:
                names = ", ".join(f"{os.path.basename(i.path)}, {i.width}x{i.height}, {f:.1f}×" for f, i in much[:UPSCALE_LISTED])
                more = f" and {len(much) - UPSCALE_LISTED} more" if len(much) > UPSCALE_LISTED else ""
                self.problem("warning", folder,
                             f"{_plural(len(much), 'image')} will be upscaled by more than {UPSCALE_NAMED:g}× to fill {'its' if len(much) == 1 else 'their'} bucket "
                             f"at resolution {self.resolution}, which blurs {'it' if len(much) == 1 else 'them'}: {names}{more}",
                             "use larger originals of these, leave them out, or train at a lower resolution")
            if slight:
                self.problem("info", folder,
                             f"{_plural(slight, 'image')} slightly smaller than {'its' if slight == 1 else 'their'} bucket at resolution {self.resolution} "
                             f"will be upscaled by at most {UPSCALE_NAMED:g}×",
                             "nothing to do; larger originals would be a little sharper")


    def report_crops(self, folder: Path, cropped: list[ImageEntry]) -> None:
        """One warning naming the images their bucket crops hard (a 4000×200 panorama in a square bucket)."""
        if not cropped:
            return
        shares = sorted(((crop_share(i, self.bucket_of[i.width, i.height]), i) for i in cropped), key=lambda f: -f[0])
        names = ", ".join(self.crop_text(share, i) for share, i in shares[:UPSCALE_LISTED])
        more = f" and {len(shares) - UPSCALE_LISTED} more" if len(shares) > UPSCALE_LISTED else ""
        self.problem("warning", folder,
                     f"{_plural(len(shares), 'image')} will be cropped hard to fit {'its' if len(shares) == 1 else 'their'} bucket "
                     f"at resolution {self.resolution}, so training sees only the middle: {names}{more}",
                     "crop them yourself to the part that matters, raise resolution or max_bucket_reso, or leave them out")

    def crop_text(self, share: float, image: ImageEntry) -> str:
        """``pano.png, 4000x200 in 64x64, 95% of its width cut``."""
        bw, bh = self.bucket_of[image.width, image.height]
        side = "width" if image.width * bh > image.height * bw else "height"
        return f"{os.path.basename(image.path)}, {image.width}x{image.height} in {bw}x{bh}, {share:.0%} of its {side} cut"


def crop_share(image: ImageEntry, bucket: Bucket) -> float:
    """The share of the image's width or height cut off when it is scaled to cover its bucket and center-cropped."""
    scale = max(bucket[0] / image.width, bucket[1] / image.height)
    return max(1 - bucket[0] / (image.width * scale), 1 - bucket[1] / (image.height * scale))


def _holds_subsets(folder: Path) -> bool:
    """Whether a folder holds a ``<repeats>_<token>`` subfolder (as ``reg/1_dog`` does); False when it cannot be listed."""
    try:
        return any(e.is_dir() and REPEAT_PREFIX.match(e.name) for e in _listing(folder))
    except UserError:
        return False


def upscale_factor(image: ImageEntry, bucket: Bucket) -> float:
    """How much an image is scaled up to cover its bucket (1.0: not at all)."""
    return max(1.0, bucket[0] / image.width, bucket[1] / image.height)


def _listing(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise UserError(f"folder {folder} cannot be listed ({exc.strerror or exc}); make it readable (chmod a+rx)") from None


def _report_duplicates(subsets: Iterable[Subset], stats: Mapping[str, tuple[int, int]], caches: list[_HeaderCache], problems: list[Problem]) -> None:
    """Warn about images with the same content.

    Only files of equal size are compared: first by a hash of their first and last 8 KiB,
    then, where those agree, by a hash of the whole file.
    """
    by_size: dict[int, list[tuple[str, int]]] = {}
    for subset in subsets:
        for image in subset.images:
            size, mtime = stats[image.path]
            by_size.setdefault(size, []).append((image.path, mtime))
    for size, group in by_size.items():
        if len(group) < 2:
            continue
        by_ends: dict[str, list[tuple[str, int]]] = {}
        for path, mtime in group:
            digest = _digest(path, size, mtime, caches, whole=size <= 2 * _ENDS)
            if digest is not None:
                by_ends.setdefault(digest, []).append((path, mtime))
        for candidates in by_ends.values():
            if len(candidates) < 2:
                continue
            first: dict[str, str] = {}
            for path, mtime in candidates:
                digest = _digest(path, size, mtime, caches, whole=True)
                if digest is None:
                    continue
                if digest in first:
                    problems.append(Problem("warning", path, f"same content as {first[digest]}",
                                            "remove one copy (a duplicate is trained twice as often)"))
                else:
                    first[digest] = path


def _digest(path: str, size: int, mtime: int, caches: list[_HeaderCache], whole: bool) -> str | None:
    """A content hash (of the whole file, or of its two ends), cached while size and mtime match."""
    slot = 8 if whole else 7
    entry, owner = None, None
    for cache in caches:
        entry = cache.lookup(path, size, mtime)
        if entry is not None:
            owner = cache
            break
    if entry is not None and entry[slot]:
        cached: str = entry[slot]
        return cached
    try:
        with open(path, "rb") as handle:
            if whole:
                hasher = hashlib.blake2b()
                while chunk := handle.read(1 << 20):
                    hasher.update(chunk)
                digest = hasher.hexdigest()
            else:
                head = handle.read(_ENDS)
                handle.seek(max(0, size - _ENDS))
                digest = hashlib.blake2b(head + handle.read(_ENDS)).hexdigest()
    except OSError:
        return None
    if entry is not None and owner is not None:
        entry[slot] = digest
        owner.dirty = True
    return digest


def cache_dir() -> Path:
    """Where scan caches live: ``scan/`` in the user's cache folder (``$XDG_CACHE_HOME/sdtui``)."""
    return userdirs.cache_dir() / "scan"


class _HeaderCache:
    """Header results and content hashes keyed by path, size and mtime; one file per root."""

    def __init__(self, file: Path | None, root: str = "", entries: dict[str, list[Any]] | None = None) -> None:
        self.file = file
        self.root = root
        self.old = entries or {}
        self.new: dict[str, list[Any]] = {}
        self.dirty = False

    @classmethod
    def open(cls, root: Path) -> _HeaderCache:
        """The cache of one dataset root (an unusable cache file just starts empty)."""
        file = cache_dir() / (hashlib.sha256(str(root).encode()).hexdigest()[:24] + ".json")
        if file.resolve().is_relative_to(root):
            return cls(None)
        data = read_json(file, {})
        valid = isinstance(data, dict) and data.get("version") == _CACHE_VERSION and data.get("root") == str(root)
        entries = data.get("entries") if valid else None
        return cls(file, str(root), entries if isinstance(entries, dict) else {})

    def lookup(self, path: str, size: int, mtime: int) -> list[Any] | None:
        """The cached entry of ``path`` if its size and mtime still match."""
        for table in (self.new, self.old):
            entry = table.get(path)
            if isinstance(entry, list) and len(entry) == 9 and entry[0] == size and entry[1] == mtime:
                return entry
        return None

    def header(self, path: str, size: int, mtime: int) -> ImageHeader:
        """The header of ``path``, read only when the cache has no current entry."""
        entry = self.lookup(path, size, mtime)
        if entry is not None:
            self.new[path] = entry
            return ImageHeader(entry[2], entry[3], entry[4], entry[5], entry[6])
        header = read_header(path)
        if header.problem != "unreadable":
            self.new[path] = [size, mtime, header.format, header.width, header.height, header.problem, header.detail, None, None]
            self.dirty = True
        return header

    def save(self) -> None:
        """Write the entries seen in this scan (atomically) when anything changed."""
        if self.file is None or not (self.dirty or self.new.keys() != self.old.keys()):
            return
        try:
            data = {"version": _CACHE_VERSION, "root": self.root, "entries": self.new}
            write_atomic(self.file, json.dumps(data, separators=(",", ":")))
        except OSError:
            pass
