"""The dataset scanner: layouts, formats by content, captions, buckets, every problem, read-only, cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from core.dataset import scan as scan_module
from core.dataset.buckets import assign_bucket, make_buckets
from core.dataset.images import read_header
from core.dataset.scan import cache_dir, scan_dataset
from core.errors import UserError
from tests.conftest import write_image


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own scan cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache"


def problems_of(scan, severity: str | None = None) -> list:
    return [p for p in scan.problems if severity is None or p.severity == severity]


def find(scan, text: str, path: Path | None = None):
    hits = [p for p in scan.problems if text in p.message and (path is None or p.path == str(path))]
    assert hits, f"no problem with '{text}' in {[str(p) for p in scan.problems]}"
    return hits[0]


def test_kohya_layout_counts_subsets_repeats_tokens_and_items(kohya_dataset) -> None:
    root = kohya_dataset(subsets=((10, "sks dog", 4), (3, "a cat", 2)))
    (root / "3_a cat" / "img001.txt").unlink()
    scan = scan_dataset(root)
    by_name = {s.name: s for s in scan.subsets}
    dog, cat = by_name["10_sks dog"], by_name["3_a cat"]
    assert (dog.repeats, dog.token, len(dog.images), dog.captions_found, dog.captions_missing) == (10, "sks dog", 4, 4, 0)
    assert (cat.repeats, cat.token, len(cat.images), cat.captions_found, cat.captions_missing) == (3, "a cat", 2, 1, 1)
    assert scan.images == 6 and scan.items_per_epoch == 4 * 10 + 2 * 3
    assert dog.images[0].caption == "sks dog, picture 0"
    assert dog.min_size == dog.max_size == (64, 64)
    assert "captioned 'a cat'" in find(scan, "without a caption file", root / "3_a cat").message
    assert not scan.has_errors


def test_a_subset_folder_passed_directly_is_one_subset(kohya_dataset) -> None:
    root = kohya_dataset(subsets=((25, "ohwx man", 3),))
    scan = scan_dataset(root / "25_ohwx man")
    assert [(s.name, s.repeats, s.token, len(s.images)) for s in scan.subsets] == [("25_ohwx man", 25, "ohwx man", 3)]
    assert scan.items_per_epoch == 75


def test_a_plain_folder_is_one_subset_with_one_repeat_and_a_note(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / "photos" / f"p{i}.png")
    scan = scan_dataset(tmp_path / "photos")
    assert [(s.repeats, len(s.images)) for s in scan.subsets] == [(1, 3)]
    note = find(scan, "no <repeats>_<token> subfolders")
    assert note.severity == "info" and "10_photos" in note.fix


def test_formats_are_detected_by_content_with_sizes_from_headers(tmp_path: Path) -> None:
    folder = tmp_path / "5_thing"
    write_image(folder / "a.png", (96, 64))
    write_image(folder / "b.JPG", (64, 128), fmt="JPEG")
    write_image(folder / "c.webp", (80, 48), fmt="WEBP")
    write_image(folder / "d.bmp", (33, 17), fmt="BMP")
    write_image(folder / "e.jpeg", (40, 30), fmt="PNG")
    write_image(folder / "f.Jpeg", (44, 22), fmt="JPEG")
    write_image(folder / "g.webp", (50, 70), fmt="WEBP")
    scan = scan_dataset(tmp_path / "5_thing")
    got = {Path(i.path).name: (i.format, i.width, i.height) for i in scan.subsets[0].images}
    assert got == {
        "a.png": ("png", 96, 64),
        "b.JPG": ("jpeg", 64, 128),
        "c.webp": ("webp", 80, 48),
        "d.bmp": ("bmp", 33, 17),
        "e.jpeg": ("png", 40, 30),
        "f.Jpeg": ("jpeg", 44, 22),
        "g.webp": ("webp", 50, 70),
    }


def test_lossless_and_extended_webp_headers(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (123, 45), (1, 2, 3)).save(tmp_path / "l.webp", lossless=True)
    Image.new("RGBA", (67, 89), (1, 2, 3, 4)).save(tmp_path / "x.webp", exif=Image.Exif())
    Image.new("RGB", (70, 50)).save(tmp_path / "p.jpg", progressive=True)
    assert (read_header(tmp_path / "l.webp").width, read_header(tmp_path / "l.webp").height) == (123, 45)
    assert (read_header(tmp_path / "x.webp").width, read_header(tmp_path / "x.webp").height) == (67, 89)
    assert (read_header(tmp_path / "p.jpg").width, read_header(tmp_path / "p.jpg").height) == (70, 50)


def test_first_caption_extension_wins_and_is_configurable(tmp_path: Path) -> None:
    folder = tmp_path / "2_tok"
    write_image(folder / "a.png")
    (folder / "a.txt").write_text("from txt\n")
    (folder / "a.caption").write_text("from caption")
    assert scan_dataset(folder).subsets[0].images[0].caption == "from txt"
    image = scan_dataset(folder, caption_extensions=(".caption", ".txt")).subsets[0].images[0]
    assert (image.caption, Path(image.caption_path or "").name) == ("from caption", "a.caption")


def test_regularisation_folder_is_reg_and_not_counted_in_items(kohya_dataset) -> None:
    root = kohya_dataset(subsets=((10, "sks dog", 2),))
    reg = kohya_dataset(subsets=((1, "dog", 5),), name="reg", captions=False)
    scan = scan_dataset(root, reg_path=reg)
    assert [(s.name, s.is_reg) for s in scan.subsets] == [("10_sks dog", False), ("1_dog", True)]
    assert (scan.images, scan.reg_images, scan.items_per_epoch) == (2, 5, 20)
    assert sum(scan.bucket_counts().values()) == 20


def test_corrupt_truncated_empty_and_broken_files_are_errors_and_left_out(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "4_x"
    write_image(folder / "good.png")
    data = write_image(folder / "cut.png", (128, 128)).read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    jpeg = write_image(folder / "cut.jpg", (128, 128), fmt="JPEG").read_bytes()
    (folder / "cut.jpg").write_bytes(jpeg[:-300])
    (folder / "junk.jpg").write_bytes(b"this is not a jpeg at all")
    (folder / "empty.webp").write_bytes(b"")
    (folder / "broken.png").symlink_to(tmp_path / "missing.png")
    scan = scan_dataset(tmp_path / "data")
    assert [Path(i.path).name for i in scan.subsets[0].images] == ["good.png"]
    assert "PNG ends before its IEND" in find(scan, "IEND", folder / "cut.png").message
    assert find(scan, "end marker", folder / "cut.jpg").severity == "error"
    assert find(scan, "not a PNG, JPEG, WebP or BMP", folder / "junk.jpg").severity == "error"
    assert find(scan, "empty", folder / "empty.webp").severity == "error"
    assert find(scan, "cannot be read", folder / "broken.png").severity == "error"
    assert scan.images == 1 and scan.has_errors


def test_folder_without_repeat_prefix_is_skipped_with_a_rename_fix(kohya_dataset) -> None:
    root = kohya_dataset(subsets=((10, "sks dog", 2),))
    write_image(root / "extra photos" / "a.png")
    write_image(root / "0_zero" / "a.png")
    write_image(root / "loose.png")
    scan = scan_dataset(root)
    assert find(scan, "1 image directly in the dataset folder is in no subset", root).severity == "warning"
    assert [s.name for s in scan.subsets] == ["10_sks dog"]
    skipped = find(scan, "no repeat prefix", root / "extra photos")
    assert skipped.severity == "warning" and "10_extra photos" in skipped.fix
    assert "1_zero" in find(scan, "repeat count 0", root / "0_zero").fix


def test_small_images_orphans_non_images_and_duplicates_are_reported(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "10_tok"
    write_image(folder / "big.png", (640, 640))
    write_image(folder / "small.png", (100, 80))
    shutil.copy(folder / "big.png", folder / "copy.png")
    (folder / "orphan.txt").write_text("nobody")
    (folder / "notes.md").write_text("hello")
    scan = scan_dataset(tmp_path / "data", resolution=512)
    assert find(scan, "will be upscaled", folder).severity == "warning"
    assert "small.png, 100x80, 5.8×" in find(scan, "will be upscaled").message
    assert "1 image " in find(scan, "will be upscaled").message
    assert find(scan, "caption file without an image", folder / "orphan.txt").severity == "warning"
    assert find(scan, "not an image", folder / "notes.md").severity == "info"
    dup = find(scan, "same content as")
    assert {dup.path, dup.message.split("same content as ")[1]} == {str(folder / "big.png"), str(folder / "copy.png")}
    assert len(scan.subsets[0].images) == 3


def test_empty_subset_and_empty_dataset_are_errors(kohya_dataset, tmp_path: Path) -> None:
    root = kohya_dataset(subsets=((10, "sks dog", 1),))
    (root / "5_empty").mkdir()
    scan = scan_dataset(root)
    assert find(scan, "subset has no usable image", root / "5_empty").severity == "error"
    (tmp_path / "nothing" / "3_none").mkdir(parents=True)
    (tmp_path / "nothing" / "3_none" / "readme.md").write_text("no images")
    empty = scan_dataset(tmp_path / "nothing")
    assert find(empty, "no usable training image", tmp_path / "nothing").severity == "error"


def test_missing_path_and_file_path_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        scan_dataset(tmp_path / "file.png")
    with pytest.raises(UserError, match=r"regularisation folder .* does not exist"):
        scan_dataset(tmp_path, reg_path=tmp_path / "noreg")


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "") for p in sorted(root.rglob("*"))}


def test_the_scan_never_touches_the_dataset(kohya_dataset, private_cache: Path) -> None:
    root = kohya_dataset(subsets=((10, "sks dog", 3), (2, "cat", 2)))
    (root / "2_cat" / "orphan.txt").write_text("x")
    shutil.copy(root / "2_cat" / "img000.png", root / "2_cat" / "dup.png")
    before = _snapshot(root)
    root_mtime = root.stat().st_mtime_ns
    scan_dataset(root)
    scan_dataset(root)
    assert _snapshot(root) == before and root.stat().st_mtime_ns == root_mtime
    caches = list(cache_dir().glob("*.json"))
    assert len(caches) == 1 and caches[0].is_relative_to(private_cache)


def test_cache_serves_unchanged_files_and_rereads_changed_ones(kohya_dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    root = kohya_dataset(subsets=((10, "sks dog", 3),))
    first = scan_dataset(root)

    def no_reading(path):
        raise AssertionError(f"header of {path} read despite the cache")

    monkeypatch.setattr(scan_module, "read_header", no_reading)
    assert scan_dataset(root).to_json() == first.to_json()
    monkeypatch.setattr(scan_module, "read_header", read_header)
    target = root / "10_sks dog" / "img001.png"
    target.write_bytes(target.read_bytes()[:40])
    assert find(scan_dataset(root), "cut short", target).severity == "error"
    assert scan_dataset(root, use_cache=False).images == 2


def test_bucket_counts_and_repeat_overrides(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i in range(3):
        write_image(root / "2_wide" / f"w{i}.png", (768, 512), (i * 50, 10, 10))
    write_image(root / "1_square" / "s.png", (512, 512))
    scan = scan_dataset(root, resolution=512, bucket_settings={"bucket_reso_steps": 64})
    buckets = make_buckets(512)
    wide, square = assign_bucket(768, 512, buckets), assign_bucket(512, 512, buckets)
    assert scan.bucket_counts() == {wide: 6, square: 1}
    assert {s.name: s.buckets for s in scan.subsets} == {"2_wide": {wide: 3}, "1_square": {square: 1}}
    assert scan.bucket_counts([(512, 512)]) == {(512, 512): 7}
    changed = scan.with_repeats({str(root / "2_wide"): 5, "1_square": 4})
    assert (changed.items_per_epoch, scan.items_per_epoch) == (19, 7)
    assert changed.bucket_counts() == {wide: 15, square: 4}
    assert [s["repeats"] for s in changed.subset_configs()] == [4, 5]
    with pytest.raises(UserError, match="at least 1"):
        scan.with_repeats({"2_wide": 0})
    with pytest.raises(UserError, match="no subset 'nope'"):
        scan.with_repeats({"nope": 2})
    unbucketed = scan_dataset(root, resolution=512, bucket_settings={"enable_bucket": False})
    assert unbucketed.bucket_counts() == {(512, 512): 7}


def test_to_json_is_json_and_has_what_the_cli_prints(kohya_dataset) -> None:
    root = kohya_dataset(subsets=((10, "sks dog", 2),))
    data = json.loads(json.dumps(scan_dataset(root).to_json(include_images=True)))
    assert data["items_per_epoch"] == 20 and data["images"] == 2
    subset = data["subsets"][0]
    assert (subset["repeats"], subset["images"], subset["captions"], subset["is_reg"]) == (10, 2, 2, False)
    assert subset["image_list"][0]["width"] == 64 and data["bucket_counts"] == {"512x512": 20}
    assert {"severity", "path", "message", "fix"} <= set(data["problems"][0])


def test_bad_bucket_settings_and_caption_extension_are_user_errors(kohya_dataset) -> None:
    root = kohya_dataset()
    with pytest.raises(UserError, match="bucket_reso_steps must be at least 8"):
        scan_dataset(root, bucket_settings={"bucket_reso_steps": 2})
    with pytest.raises(UserError, match=r"caption extension .png is an image extension"):
        scan_dataset(root, caption_extensions=(".png",))


def test_cache_file_is_never_written_inside_the_dataset(kohya_dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    root = kohya_dataset()
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache-here"))
    before = sorted(os.listdir(root))
    scan_dataset(root)
    assert sorted(os.listdir(root)) == before


def test_large_duplicates_need_equal_content_not_just_equal_ends(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "data" / "2_x"
    folder.mkdir(parents=True)
    image = Image.new("RGB", (200, 200), (10, 20, 30))
    image.save(folder / "a.bmp")
    image.save(folder / "b.bmp")
    image.putpixel((100, 100), (255, 0, 0))
    image.save(folder / "c.bmp")
    scan = scan_dataset(tmp_path / "data")
    duplicates = [p for p in scan.problems if "same content" in p.message]
    assert [(Path(p.path).name, p.message.rsplit("/", 1)[1]) for p in duplicates] == [("b.bmp", "a.bmp")]


def test_duplicates_are_found_without_hashlib_file_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.10 (which sdtui supports) has no hashlib.file_digest: two images of one size must not crash the scan there."""
    from PIL import Image

    monkeypatch.delattr(hashlib, "file_digest", raising=False)
    folder = tmp_path / "data" / "2_x"
    folder.mkdir(parents=True)
    image = Image.new("RGB", (200, 200), (10, 20, 30))
    image.save(folder / "a.bmp")
    image.save(folder / "b.bmp")
    scan = scan_dataset(tmp_path / "data")
    assert [Path(p.path).name for p in scan.problems if "same content" in p.message] == ["b.bmp"]


def test_data_appended_after_the_image_is_not_truncation(tmp_path: Path) -> None:
    folder = tmp_path / "3_phone"
    jpeg = write_image(folder / "motion.jpg", (96, 64), fmt="JPEG")
    jpeg.write_bytes(jpeg.read_bytes() + b"\x00ftypmp42" + os.urandom(5000))
    png = write_image(folder / "tail.png", (32, 32))
    png.write_bytes(png.read_bytes() + os.urandom(3000))
    scan = scan_dataset(folder)
    assert sorted(Path(i.path).name for i in scan.subsets[0].images) == ["motion.jpg", "tail.png"]
    assert not scan.has_errors


@pytest.mark.parametrize(("orientation", "shown"), [(1, (120, 80)), (3, (120, 80)), (6, (80, 120)), (8, (80, 120))])
def test_phone_photos_are_sized_as_shown_after_exif_rotation(tmp_path: Path, orientation: int, shown: tuple[int, int]) -> None:
    from PIL import Image

    path = tmp_path / "1_phone" / "portrait.jpg"
    path.parent.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", (120, 80), (10, 200, 30)).save(path, format="JPEG", exif=exif)
    header = read_header(path)
    assert (header.width, header.height) == shown
    with Image.open(path) as image:
        from PIL import ImageOps

        assert ImageOps.exif_transpose(image).size == shown


def test_scan_config_takes_repeats_token_and_reg_from_the_run_config(kohya_dataset) -> None:
    from core.config import new_config
    from core.dataset.scan import scan_config

    root = kohya_dataset(((10, "sks dog", 3), (1, "dog", 2)))
    config = new_config(
        "run",
        "",
        "sd1",
        "lora",
        [{"path": str(root / "10_sks dog"), "repeats": 25, "token": "sks dog", "is_reg": False}, {"path": str(root / "1_dog"), "repeats": 1, "token": "dog", "is_reg": True}],
        {"resolution": 64},
    )
    scan = scan_config(config)
    assert [(s.repeats, s.is_reg) for s in scan.subsets] == [(25, False), (1, True)]
    assert scan.items_per_epoch == 75 and scan.reg_images == 2


def test_sizes_are_real_images_and_only_the_much_upscaled_ones_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "10_tok"
    write_image(folder / "wide.png", (1024, 300))
    write_image(folder / "tall.png", (300, 1216))
    write_image(folder / "tiny.png", (300, 300))
    for n in range(11):
        write_image(folder / f"near{n:02d}.png", (480, 480))
    scan = scan_dataset(tmp_path / "data", resolution=512)
    subset = scan.subsets[0]
    # real images, not the largest width paired with the largest height (1024x1216 exists nowhere)
    assert subset.min_size == (300, 300) and subset.max_size == (300, 1216)
    warning = find(scan, "upscaled by more than 1.5×", folder)
    assert warning.severity == "warning" and "1 image " in warning.message and "tiny.png, 300x300, 1.7×" in warning.message
    assert "near" not in warning.message
    slight = find(scan, "slightly smaller", folder)
    assert slight.severity == "info" and slight.message.startswith("11 images")


def test_many_problems_of_one_kind_are_one_grouped_problem(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "10_dog"
    write_image(folder / "good.png")
    for n in range(500):
        (folder / f"empty{n:03d}.png").touch()
    for n in range(2):
        (folder / f"notes{n}.png").write_text("not an image")
    scan = scan_dataset(folder.parent)
    grouped = [p for p in scan.problems if p.count > 1]
    assert len(grouped) == 1 and grouped[0].count == 500 and grouped[0].path == str(folder)
    assert grouped[0].message.startswith("500 files: the file is empty (0 bytes)") and "empty000.png" in grouped[0].message
    assert grouped[0].to_json()["examples"][0] == str(folder / "empty000.png")
    assert len([p for p in scan.problems if "notes" in p.path]) == 2, "a kind found twice keeps one problem per file"
    assert [i.path for i in scan.subsets[0].images] == [str(folder / "good.png")]


def test_the_scan_text_lists_at_most_a_screenful_of_problems(tmp_path: Path) -> None:
    from cli.planning import format_scan
    from core.dataset.problems import LISTED

    root = tmp_path / "data"
    write_image(root / "1_dog" / "a.png")
    for n in range(LISTED + 10):
        (root / f"cats{n}").mkdir()  # each its own "no repeat prefix" warning (the fix names the folder)
    scan = scan_dataset(root)
    text = format_scan(scan)
    listed_lines = [line for line in text.splitlines() if line.startswith(("  error", "  warning", "  info"))]
    assert len(scan.problems) > LISTED and len(listed_lines) == LISTED
    assert f"… and {len(scan.problems) - LISTED} more problems" in text and "sdtui scan DIR --json lists them all" in text


def test_a_subset_symlinked_out_of_the_dataset_is_named(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    write_image(outside / "far.png")
    root = tmp_path / "data"
    write_image(root / "10_dog" / "a.png")
    (root / "5_far").symlink_to(outside)
    scan = scan_dataset(root)
    said = [p for p in scan.problems if p.path == str(root / "5_far")]
    assert said and said[0].severity == "warning" and f"a symlink to {outside}, outside the dataset folder" in said[0].message
    assert scan.images == 2, "a linked subset is still used: the user may have linked it on purpose"


def test_an_image_linked_from_outside_is_used_with_a_notice_and_a_linked_non_image_is_left_out(tmp_path: Path) -> None:
    outside = write_image(tmp_path / "elsewhere" / "far.png")
    secret = tmp_path / "elsewhere" / "secret"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    folder = tmp_path / "data" / "10_dog"
    write_image(folder / "a.png")
    (folder / "linked.png").symlink_to(outside)
    (folder / "passwd.png").symlink_to(secret)
    (folder / "inside.png").symlink_to(folder / "a.png")
    scan = scan_dataset(folder.parent)
    assert sorted(Path(i.path).name for i in scan.subsets[0].images) == ["a.png", "inside.png", "linked.png"]
    outside_notes = {Path(p.path).name for p in scan.problems if "outside the dataset folder" in p.message}
    assert outside_notes == {"linked.png", "passwd.png"}
    assert any(Path(p.path).name == "passwd.png" and p.severity == "error" and "not a PNG" in p.message for p in scan.problems)


def test_a_pipe_named_like_an_image_is_never_opened(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "10_dog"
    write_image(folder / "a.png")
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(folder / "a.txt")
    found: list = []
    worker = threading.Thread(target=lambda: found.append(scan_dataset(folder.parent)), daemon=True)
    worker.start()
    worker.join(60)
    assert found, "the scan hangs on a pipe named like an image or a caption"
    scan = found[0]
    said = {(Path(p.path).name, p.severity) for p in scan.problems if "not a regular file" in p.message}
    assert said == {("pipe.png", "error"), ("a.txt", "warning")}
    assert scan.subsets[0].images[0].caption is None
    assert read_header(folder / "pipe.png").problem == "not_file"


def test_a_file_name_with_a_line_break_gets_a_warning(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "10_dog"
    write_image(folder / "two\nlines.png")
    scan = scan_dataset(folder.parent)
    assert [p.severity for p in scan.problems if p.path.endswith("two\nlines.png") and "line break" in p.message] == ["warning"]
    assert scan.images == 1
