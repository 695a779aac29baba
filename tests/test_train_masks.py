"""Masked loss: the loss function, masks that follow crops and flips, masks in batches, the cache key and the scan's problems."""

from __future__ import annotations

import random

import pytest
import tomlkit
import torch
from PIL import Image

from core.dataset.masks import mask_problems
from core.train.data.examples import load_example
from core.train.masks import per_sample_loss


def test_an_all_ones_mask_gives_exactly_the_unmasked_loss() -> None:
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)

    assert torch.equal(per_sample_loss(pred, target, torch.ones(2, 1, 64, 64)), per_sample_loss(pred, target))
    assert torch.equal(per_sample_loss(pred, target), torch.nn.functional.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)))


def test_a_half_mask_changes_only_the_masked_halfs_gradient() -> None:
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(1, 4, 8, 8, generator=gen)
    start = torch.randn(1, 4, 8, 8, generator=gen)
    mask = torch.ones(1, 1, 64, 64)
    mask[..., :, :32] = 0.0  # the left half of the image does not train

    plain = start.clone().requires_grad_(True)
    per_sample_loss(plain, target).sum().backward()
    masked = start.clone().requires_grad_(True)
    per_sample_loss(masked, target, mask).sum().backward()

    assert torch.equal(masked.grad[..., 4:], plain.grad[..., 4:])  # the trained half: as without a mask
    assert torch.count_nonzero(masked.grad[..., :4]) == 0  # the masked half: no gradient
    assert torch.count_nonzero(plain.grad[..., :4]) > 0


def _image_with_alpha(path, size=(128, 64)) -> None:
    """A wide RGBA image: opaque on the left third, transparent elsewhere, red where opaque."""
    image = Image.new("RGBA", size, (0, 0, 255, 0))
    for x in range(size[0] // 3):
        for y in range(size[1]):
            image.putpixel((x, y), (255, 0, 0, 255))
    image.save(path)


def _red(example) -> torch.Tensor:
    return (example.pixels[0] > 0.5) & (example.pixels[2] < 0)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("random_crop", [False, True])
def test_masks_follow_crops_and_flips(tmp_path, flip, random_crop) -> None:
    path = tmp_path / "a.png"
    _image_with_alpha(path)

    example = load_example(str(path), (64, 64), random_crop, flip, random.Random(3), alpha_mask=True)

    assert example.mask.shape == (1, 64, 64)
    opaque = example.mask[0] > 0.5
    assert torch.equal(opaque, _red(example))  # the mask covers exactly the red (opaque) pixels after the crop and flip
    if flip and not random_crop:
        assert bool(opaque[:, -1].all()) and not bool(opaque[:, 0].any())


def test_a_mask_file_follows_its_image_and_white_trains(tmp_path) -> None:
    image = tmp_path / "img" / "a.png"
    image.parent.mkdir()
    Image.new("RGB", (64, 128), (10, 20, 30)).save(image)
    masks = tmp_path / "masks"
    masks.mkdir()
    mask = Image.new("L", (64, 128), 0)
    mask.paste(255, (0, 0, 64, 32))  # the top quarter trains
    mask.save(masks / "a.webp", lossless=True)

    example = load_example(str(image), (64, 64), mask_path=str(masks / "a.webp"))

    # the 64x128 image is centre-cropped to 64x64: rows 32..96 of it, so the white top quarter is cut away
    assert float(example.mask.max()) < 0.05
    for seed in range(4):
        moved = load_example(str(image), (64, 64), random_crop=True, rng=random.Random(seed), mask_path=str(masks / "a.webp"))
        top = moved.crop_top_left[0]
        rows = [r for r in range(64) if abs(top + r - 32) > 1]  # away from the edge of the white quarter
        assert [bool(moved.mask[0, r, 0] > 0.5) for r in rows] == [top + r < 32 for r in rows]


def test_the_scan_reports_images_without_a_mask_and_masks_without_an_image(tmp_path) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.new("L", (8, 8), 255).save(masks / "a.png")
    Image.new("L", (8, 8), 255).save(masks / "stray.png")

    problems = mask_problems([str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")], masks)

    found = {(p.path.rsplit("/", 1)[-1], p.message.split(",")[0]) for p in problems}
    assert found == {("b.jpg", "the image has no mask in the mask folder"), ("stray.png", "the mask has no training image with the same name")}
    assert all(p.fix for p in problems)


def _masked_dataset(root) -> None:
    """Two 64x64 RGBA images (left half opaque) in a kohya subset, and mask files for the mask_dir tests."""
    folder = root / "data" / "1_sks dog"
    folder.mkdir(parents=True)
    masks = root / "masks"
    masks.mkdir()
    for i in range(2):
        image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        image.paste((200, 40 * i, 90, 255), (0, 0, 32, 64))
        image.save(folder / f"img{i}.png")
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (0, 0, 64, 32))  # the top half trains
        mask.save(masks / f"img{i}.png")
    (folder / "img0.txt").write_text("sks dog")


@pytest.mark.parametrize("cache_latents", [False, True])
def test_batches_carry_the_mask_on_their_grid_and_the_run_trains(tmp_path, tiny_models, cache_latents, monkeypatch) -> None:
    from tests.train_helpers import make_run, one_step, set_up

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _masked_dataset(tmp_path)
    run = make_run(tmp_path / "run", tiny_models("sd1"), tmp_path / "data", settings={"alpha_mask": True, "cache_latents": cache_latents})
    trainer = set_up(run)

    from tests.train_helpers import first_batch

    batch = first_batch(trainer)
    grid = batch["latents"].shape[-1] if cache_latents else 64  # the latent grid when cached, else the pixels
    assert batch["masks"].shape == (1, 1, grid, grid)
    assert float(batch["masks"][0, 0, :, : grid // 2].min()) == 1.0 and float(batch["masks"][0, 0, :, grid // 2 :].max()) == 0.0
    assert one_step(trainer) > 0


def test_the_mask_folder_wins_and_changes_the_latent_cache_key(tmp_path, tiny_models, monkeypatch) -> None:
    from core.train.data.latent_cache import entry_path
    from core.train.masks import mask_tag
    from tests.train_helpers import first_batch, make_run, set_up

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _masked_dataset(tmp_path)
    run = make_run(tmp_path / "run", tiny_models("sd1"), tmp_path / "data", settings={"alpha_mask": True, "cache_latents": True})
    doc = tomlkit.parse((run / "run.toml").read_text(encoding="utf-8"))
    doc["dataset"]["mask_dir"] = str(tmp_path / "masks")
    (run / "run.toml").write_text(tomlkit.dumps(doc), encoding="utf-8")
    trainer = set_up(run)

    batch = first_batch(trainer)
    half = batch["masks"].shape[-2] // 2
    assert float(batch["masks"][0, 0, :half].min()) == 1.0 and float(batch["masks"][0, 0, half:].max()) == 0.0  # the file's top half
    item = trainer.session.data.train_data.items[0]
    assert item.mask.endswith(f"{item.path.rsplit('/', 1)[-1]}")
    folder = tmp_path / "c"
    plain = entry_path(folder, item.path, item.bucket, "vae")
    masked = entry_path(folder, item.path, item.bucket, "vae", mask_tag(item, "i", True, True))
    assert plain != masked and masked.is_file() is False  # the masked entry has its own key
    cached = list((tmp_path / "cache").rglob("*.safetensors"))
    assert cached  # written with the mask
    from safetensors import safe_open

    with safe_open(str(cached[0]), framework="pt") as handle:
        assert "mask" in handle.keys()  # noqa: SIM118 - safe_open has keys(), not __contains__


@pytest.mark.parametrize("cache_latents", [False, True])
def test_masks_train_with_prior_preservation_min_snr_and_a_validation_split(tmp_path, tiny_models, cache_latents, monkeypatch) -> None:
    from tests.conftest import make_kohya
    from tests.train_helpers import add_reg_subset, make_run, metrics, train

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _masked_dataset(tmp_path)
    for i in range(2, 4):  # two more images, so one can be held out
        Image.open(tmp_path / "data" / "1_sks dog" / "img0.png").save(tmp_path / "data" / "1_sks dog" / f"img{i}.png")
    classes = make_kohya(tmp_path / "classes", ((1, "dog", 2),))
    run = make_run(
        tmp_path / "run",
        tiny_models("sd1"),
        tmp_path / "data",
        method="dreambooth",
        settings={"alpha_mask": True, "cache_latents": cache_latents, "min_snr_gamma": 5.0, "class_images_per_instance": 0},
        schedule={"max_steps": 2},
    )
    add_reg_subset(run, classes / "1_dog")
    doc = tomlkit.parse((run / "run.toml").read_text(encoding="utf-8"))
    doc["validation"] = {"split": 0.25, "every_n_steps": 1}
    (run / "run.toml").write_text(tomlkit.dumps(doc), encoding="utf-8")

    assert train(run) == 0

    validation = metrics(run, "validation")
    assert [r["step"] for r in validation] == [1, 2]
    assert validation[0]["loss"] != validation[1]["loss"]  # a model that learns moves the curve
    assert all(r["loss"] > 0 for r in metrics(run, "step"))
