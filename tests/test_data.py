"""The trainer's data: items, buckets, batches, augmentation, corrupt files and caches."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from core.dataset.buckets import assign_bucket, make_buckets
from core.errors import UserError
from core.families.sdxl.runtime import time_ids_batch
from core.plan.schedule import steps_per_epoch
from core.settings import resolve
from core.train.data.captions import process_caption
from core.train.data.examples import load_example
from core.train.data.items import (
    BatchDataset,
    CacheNotValid,
    batches_for_epoch,
    build_items,
    class_batches_for_epoch,
    make_loader,
)
from core.train.data.latent_cache import cache_latents
from core.train.data.text_cache import cache_text_outputs
from core.train.model.loading import load_components
from core.train.model.text import encode_captions, encode_text, tokenize
from tests.conftest import write_image

SETTINGS = {"resolution": 128, "min_bucket_reso": 64, "max_bucket_reso": 256, "bucket_reso_steps": 64}


def _config(*subsets: tuple[Path, int, str, bool]) -> dict:
    return {"dataset": {"subsets": [{"path": str(p), "repeats": r, "token": t, "is_reg": reg} for p, r, t, reg in subsets]}}


@pytest.fixture
def wide_and_square(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        write_image(root / "5_sks dog" / f"wide{i}.png", (256, 64), (30 * i, 100, 200))
    for i in range(2):
        write_image(root / "5_sks dog" / f"square{i}.png", (96, 96), (200, 30 * i, 40))
    (root / "5_sks dog" / "wide0.txt").write_text("sks dog, running, grass")
    for i in range(2):
        write_image(root / "1_dog" / f"class{i}.png", (128, 128), (10, 10, 10 + 50 * i))
    return root


def test_items_buckets_and_captions(wide_and_square):
    config = _config((wide_and_square / "5_sks dog", 5, "sks dog", False), (wide_and_square / "1_dog", 1, "dog", True))
    data = build_items(config, SETTINGS)
    buckets = make_buckets(128, 64, 256, 64)
    assert data.buckets == buckets
    assert len(data.items) == 5 and len(data.class_items) == 2
    for item in data.items:
        assert item.bucket == assign_bucket(item.width, item.height, buckets)
    assert data.bucket_counts() == {(256, 64): 15, (128, 128): 10}
    captions = {Path(i.path).stem: i.caption for i in data.items}
    assert captions["wide0"] == "sks dog, running, grass"
    assert captions["wide1"] == "sks dog"  # no caption file: the subset token
    assert {i.caption for i in data.class_items} == {"dog"}


def test_the_trainer_takes_a_generated_caption_after_the_caption_file(wide_and_square):
    from core.captions.layer import CaptionerKey, CaptionLayer, content_hash

    folder = wide_and_square / "5_sks dog"
    layer, key = CaptionLayer(), CaptionerKey("florence2", "m")
    layer.put(content_hash(folder / "wide1.png"), key, "sks dog jumping over a fence")
    layer.put(content_hash(folder / "wide0.png"), key, "never used: wide0 has its own caption file")
    data = build_items(_config((folder, 5, "sks dog", False)), SETTINGS)
    captions = {Path(i.path).stem: i.caption for i in data.items}
    assert captions["wide1"] == "sks dog jumping over a fence"
    assert captions["wide0"] == "sks dog, running, grass" and captions["wide2"] == "sks dog"


def test_batches_match_the_planners_step_count(wide_and_square):
    data = build_items(_config((wide_and_square / "5_sks dog", 5, "sks dog", False)), SETTINGS)
    for world in (1, 2, 3):
        per_rank = [batches_for_epoch(data, 2, seed=1, epoch=0, rank=r, world=world) for r in range(world)]
        assert {len(b) for b in per_rank} == {steps_per_epoch(data.bucket_counts(), 2, world, 1)}
        for batches in per_rank:
            for batch in batches:
                assert len({data.items[i].bucket for i in batch}) == 1
    first = batches_for_epoch(data, 2, seed=1, epoch=0)
    assert first == batches_for_epoch(data, 2, seed=1, epoch=0)
    assert first != batches_for_epoch(data, 2, seed=1, epoch=1)


def test_missing_subset_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_items(_config((tmp_path / "nope", 1, "x", False)), SETTINGS)


def test_caption_shuffle_keep_tokens_and_dropout():
    caption = "sks dog, one, two, three, four, five"
    settings = resolve("settings", {"shuffle_caption": True, "keep_tokens": 2})
    outs = {process_caption(caption, settings, random.Random(s)) for s in range(20)}
    assert len(outs) > 1
    assert all(o.startswith("sks dog, one, ") for o in outs)
    assert all(sorted(o.split(", ")) == sorted(caption.split(", ")) for o in outs)
    assert process_caption(caption, resolve("settings"), random.Random(0)) == caption
    dropped = [process_caption(caption, resolve("settings", {"caption_dropout_rate": 0.5}), random.Random(s)) for s in range(200)]
    assert 50 < dropped.count("") < 150


def test_flip_and_random_crop_take_effect(tmp_path):
    path = write_image(tmp_path / "img.png", (256, 128), (250, 0, 0))
    from PIL import Image, ImageDraw

    image = Image.open(path).convert("RGB")
    ImageDraw.Draw(image).rectangle([0, 0, 40, 127], fill=(0, 0, 255))  # a blue band on the left
    image.save(path)
    plain = load_example(str(path), (128, 128))
    flipped = load_example(str(path), (128, 128), flip=True)
    assert torch.allclose(flipped.pixels, plain.pixels.flip(-1))
    assert flipped.crop_top_left[1] == 256 - 64 - 128  # SDXL crop left measured on the mirrored image
    crops = {load_example(str(path), (128, 128), random_crop=True, rng=random.Random(s)).crop_top_left for s in range(8)}
    assert len(crops) > 1
    assert plain.crop_top_left == (0, 64) and plain.original_size == (128, 256) and plain.target_size == (128, 128)
    assert plain.pixels.min() >= -1 and plain.pixels.max() <= 1


def test_corrupt_image_is_skipped(wide_and_square, caplog):
    data = build_items(_config((wide_and_square / "5_sks dog", 1, "sks dog", False)), SETTINGS)
    wide = [i for i, item in enumerate(data.items) if item.bucket == (256, 64)]
    Path(data.items[wide[0]].path).write_bytes(b"not a png any more")
    dataset = BatchDataset(data, [wide, [wide[0]]], seed=0, epoch=0)
    batch = dataset[0]
    assert batch["pixel_values"].shape == (len(wide) - 1, 3, 64, 256)
    assert wide[0] not in batch["item_ids"]
    assert dataset[1] is None  # nothing usable in this batch: the loop skips it
    assert "skipping unreadable image" in caplog.text
    assert len(list(make_loader(data, [wide, [wide[0]]], seed=0, epoch=0))) == 2


def test_each_image_the_scan_leaves_out_is_one_warning(wide_and_square, caplog):
    folder = wide_and_square / "5_sks dog"
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "empty.jpg").write_bytes(b"")
    caplog.set_level("WARNING", logger="core.train")
    data = build_items(_config((folder, 1, "sks dog", False)), SETTINGS)
    assert {Path(item.path).name for item in data.items} == {"wide0.png", "wide1.png", "wide2.png", "square0.png", "square1.png"}
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping image")]
    assert len(skipped) == 2
    assert any(str(folder / "broken.png") in m for m in skipped) and any(str(folder / "empty.jpg") in m for m in skipped)


def test_prior_preservation_batches_pair_class_images(wide_and_square):
    config = _config((wide_and_square / "5_sks dog", 1, "sks dog", False), (wide_and_square / "1_dog", 1, "dog", True))
    data = build_items(config, SETTINGS)
    batches = batches_for_epoch(data, 2, seed=0, epoch=0)
    classes = class_batches_for_epoch(data, batches, seed=0, epoch=0)
    assert [len(c) for c in classes] == [len(b) for b in batches]
    batch = BatchDataset(data, batches, 0, 0, classes)[0]
    n = len(batches[0])
    assert batch["is_class"].tolist() == [False] * n + [True] * n
    assert batch["captions"][n:] == ["dog"] * n
    assert batch["pixel_values"].shape[0] == 2 * n


@pytest.mark.slow
def test_latent_cache_memory_and_disk_agree(tmp_path, wide_and_square, tiny_models):
    components = load_components(str(tiny_models("sd1")))
    config = _config((wide_and_square / "5_sks dog", 2, "sks dog", False), (wide_and_square / "1_dog", 1, "dog", True))
    before = sorted(p.name for p in wide_and_square.rglob("*"))
    data = build_items(config, SETTINGS)
    batches = batches_for_epoch(data, 2, 0, 0)
    pixels = BatchDataset(data, batches, 0, 0)[0]["pixel_values"]
    memory = cache_latents(components, data, "cpu", torch.float32)
    in_memory = BatchDataset(data, batches, 0, 0)[0]
    expected = components.vae.encode(pixels).latent_dist.mode() * components.vae.config.scaling_factor
    torch.testing.assert_close(in_memory["latents"], expected, atol=1e-5, rtol=1e-4)
    assert len(memory) == len(data.items) + 2 * len(data.bucket_counts())  # class images at every bucket

    folder = tmp_path / "cache" / "latents"
    disk = cache_latents(components, data, "cpu", torch.float32, folder, in_memory=False)
    files = sorted(folder.rglob("*.safetensors"))
    assert len(files) == len(disk) == disk.encoded and disk.memory == {}
    torch.testing.assert_close(BatchDataset(data, batches, 0, 0)[0]["latents"], in_memory["latents"])
    held = cache_latents(components, data, "cpu", torch.float32, folder, in_memory=True)
    assert held.encoded == 0 and held.reused == len(files) and held.files == {}
    torch.testing.assert_close(BatchDataset(data, batches, 0, 0)[0]["latents"], in_memory["latents"])
    assert sorted(p.name for p in wide_and_square.rglob("*")) == before  # the dataset is untouched


@pytest.mark.slow
def test_latent_cache_is_reused_across_runs_until_the_image_or_vae_changes(tmp_path, wide_and_square, tiny_models):
    components = load_components(str(tiny_models("sd1")))
    folder = tmp_path / "cache"
    config = _config((wide_and_square / "5_sks dog", 1, "sks dog", False))
    first = cache_latents(components, build_items(config, SETTINGS), "cpu", torch.float32, folder)
    assert first.encoded == 5 and first.reused == 0
    mtimes = {p: p.stat().st_mtime_ns for p in folder.rglob("*.safetensors")}
    again = cache_latents(components, build_items(config, SETTINGS), "cpu", torch.float32, folder)  # a second run
    assert again.encoded == 0 and again.reused == 5
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.safetensors")} == mtimes  # nothing rewritten

    write_image(wide_and_square / "5_sks dog" / "square0.png", (96, 96), (0, 0, 0))  # the user edits one image
    edited = cache_latents(components, build_items(config, SETTINGS), "cpu", torch.float32, folder)
    assert edited.encoded == 1 and edited.reused == 4
    bigger = cache_latents(components, build_items(config, {**SETTINGS, "resolution": 192}), "cpu", torch.float32, folder)
    assert (bigger.encoded, bigger.reused) == (2, 3)  # the squares get a bigger bucket; the wide images keep theirs
    with torch.no_grad():
        components.vae.encoder.conv_in.weight.mul_(1.5)  # another VAE
    assert cache_latents(components, build_items(config, SETTINGS), "cpu", torch.float32, folder).encoded == 5


@pytest.mark.slow
def test_latent_cache_shards_the_encoding_across_ranks(tmp_path, wide_and_square, tiny_models):
    """Each rank encodes its fixed share before the one barrier, whatever the others wrote already."""
    components = load_components(str(tiny_models("sd1")))
    folder = tmp_path / "cache"
    config = _config((wide_and_square / "5_sks dog", 1, "sks dog", False), (wide_and_square / "1_dog", 1, "dog", True))
    total = 5 + 2 * 2  # instance images + class images at both buckets
    seen: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
    barriers = []

    def cache(rank: int):
        return cache_latents(
            components,
            build_items(config, SETTINGS),
            "cpu",
            torch.float32,
            folder,
            rank=rank,
            world=2,
            barrier=lambda: barriers.append(rank),
            progress=lambda d, t: seen[rank].append((d, t)),
        )

    fast = cache(1)  # rank 1 is done before rank 0 even looks at the folder
    slow = cache(0)
    assert (fast.encoded, slow.encoded) == (4, 5) and (fast.reused, slow.reused) == (0, 0)  # rank 0 still does its own share
    assert seen[1][0] == (0, 4) and seen[1][-1] == (4, 4) and seen[0][-1] == (5, 5) and barriers == [1, 0]
    assert len(slow) == total == len(list(folder.rglob("*.safetensors")))  # rank 0 holds rank 1's entries too
    again = cache(1)
    assert (again.encoded, again.reused, len(again)) == (0, 4, total)


def test_latent_cache_refuses_random_crop_and_flip(wide_and_square, tiny_models):
    components = load_components(str(tiny_models("sd1")))
    for key in ("random_crop", "flip_aug"):
        data = build_items(_config((wide_and_square / "5_sks dog", 1, "t", False)), {**SETTINGS, key: True})
        with pytest.raises(CacheNotValid, match=key):
            cache_latents(components, data, "cpu", torch.float32)


def test_text_encoder_cache(wide_and_square, tiny_models):
    components = load_components(str(tiny_models("sdxl")))
    settings = {**SETTINGS, "caption_dropout_rate": 0.1}
    data = build_items(_config((wide_and_square / "5_sks dog", 1, "sks dog", False)), settings)
    cache = cache_text_outputs(components, data, "cpu", torch.float32)
    assert "" in cache  # dropout trains on the empty caption
    batch = BatchDataset(data, batches_for_epoch(data, 2, 0, 0), 0, 0)[0]
    direct = encode_captions(components, batch["captions"])
    torch.testing.assert_close(batch["text"]["hidden_states"], direct.prompt_embeds)
    torch.testing.assert_close(batch["text"]["pooled"], direct.pooled_prompt_embeds)
    cache.entries.pop(batch["captions"][0])
    assert "text" not in BatchDataset(data, batches_for_epoch(data, 2, 0, 0), 0, 0)[0]  # the loop encodes instead
    for key in ("train_text_encoder", "shuffle_caption"):
        data.settings[key] = True
        with pytest.raises(CacheNotValid):
            cache_text_outputs(components, data, "cpu", torch.float32)
        data.settings[key] = False


def test_sdxl_conditioning_shapes_and_gradients(tiny_models):
    components = load_components(str(tiny_models("sdxl")))
    ids = tokenize(components, ["a red circle", "a blue square"])
    assert [t.shape for t in ids] == [(2, 77), (2, 77)]
    table = components.text_encoders[0].get_input_embeddings().weight
    table.requires_grad_(True)
    embeddings = encode_text(components, ids)
    assert embeddings.prompt_embeds.shape == (2, 77, 32 + 64)
    assert embeddings.pooled_prompt_embeds.shape == (2, 32)
    embeddings.prompt_embeds.sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0
    time_ids = time_ids_batch([(64, 256)], [(0, 32)], [(64, 128)])
    assert time_ids.tolist() == [[64.0, 256.0, 0.0, 32.0, 64.0, 128.0]]


def test_loader_with_a_worker_matches_in_process(wide_and_square):
    data = build_items(_config((wide_and_square / "5_sks dog", 1, "sks dog", False)), {**SETTINGS, "flip_aug": True, "random_crop": True})
    batches = batches_for_epoch(data, 2, 0, 0)
    inline = list(make_loader(data, batches, seed=3, epoch=0, workers=0))
    worker = list(make_loader(data, batches, seed=3, epoch=0, workers=1))
    assert len(inline) == len(worker) == len(batches)
    for a, b in zip(inline, worker):
        torch.testing.assert_close(a["pixel_values"], b["pixel_values"])
        assert a["crop_top_lefts"] == b["crop_top_lefts"]


def test_caption_extension_from_the_run_config(tmp_path):
    import tomlkit

    from core.config import RunConfig

    folder = tmp_path / "data" / "2_cat"
    write_image(folder / "a.png", (64, 64))
    (folder / "a.txt").write_text("from txt")
    (folder / "a.caption").write_text("from caption")
    config = _config((folder, 2, "cat", False))
    assert build_items(config, SETTINGS).items[0].caption == "from txt"
    config["dataset"]["caption_extension"] = ".caption"
    assert build_items(config, SETTINGS).items[0].caption == "from caption"
    document = tomlkit.parse(f'[dataset]\ncaption_extension = ".caption"\n[[dataset.subsets]]\npath = "{folder}"\nrepeats = 2\ntoken = "cat"\n')
    assert build_items(RunConfig(document), SETTINGS).items[0].caption == "from caption"


def test_demo_dataset_is_deterministic_and_trainable(tmp_path):
    import subprocess
    import sys

    from core.dataset.demo_data import make_demo_dataset

    first = make_demo_dataset(tmp_path / "a")
    second = make_demo_dataset(tmp_path / "b")
    files = sorted(p.relative_to(first) for p in first.rglob("*"))
    assert files == sorted(p.relative_to(second) for p in second.rglob("*"))
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files if (first / f).is_file())
    folder = first / "10_shapes"
    assert (len(list(folder.glob("*.png"))), len(list(folder.glob("*.txt")))) == (12, 8)  # 4 left for the demo's caption step
    data = build_items(_config((folder, 10, "shapes", False)), {"resolution": 64, "min_bucket_reso": 64, "bucket_reso_steps": 32, "max_bucket_reso": 128})
    assert data.items_per_epoch == 120
    captions = [item.caption for item in data.items]
    assert sum(c.startswith("a ") for c in captions) == 8 and captions.count("shapes") == 4  # the 4 uncaptioned fall back to the token
    code = "import sys, core.dataset.demo_data; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode == 0


def test_each_subset_trains_with_its_own_caption_extension_and_caption_options(tmp_path):
    from core.config import load_config, new_config, save_config

    tags, plain = tmp_path / "data" / "2_tags", tmp_path / "data" / "1_plain"
    for folder in (tags, plain):
        write_image(folder / "a.png", (128, 128), (200, 10, 10))
        (folder / "a.txt").write_text("from the txt file")
    (tags / "a.caption").write_text("sks, red, square, flat")
    subsets = [
        {"path": str(tags), "repeats": 2, "token": "sks", "caption_extension": ".caption", "keep_tokens": 1, "shuffle_caption": True, "flip_aug": True},
        {"path": str(plain), "repeats": 1, "token": "x"},
    ]
    config = load_config(save_config(new_config("r", "/m", "sd1", "lora", subsets, SETTINGS), tmp_path / "run.toml"))
    assert config.subsets[0]["caption_extension"] == ".caption" and "flip_aug" not in config.subsets[1]
    data = build_items(config, config.settings)
    first, second = sorted(data.items, key=lambda item: item.subset)
    assert first.caption == "sks, red, square, flat" and second.caption == "from the txt file"
    own, general = data.settings_of(first), data.settings_of(second)
    assert (own["keep_tokens"], own["shuffle_caption"], own["flip_aug"]) == (1, True, True)
    assert (general["keep_tokens"], general["shuffle_caption"], general["flip_aug"]) == (0, False, False)
    assert data.settings["flip_aug"] and data.settings["shuffle_caption"]  # one flipping subset keeps the caches off
    shuffled = {process_caption(first.caption, own, random.Random(seed)) for seed in range(20)}
    assert len(shuffled) > 1 and all(c.startswith("sks, ") for c in shuffled)
