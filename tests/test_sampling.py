"""Sample rendering during training and generated DreamBooth class images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.errors import UserError
from core.train.data.class_images import prepare_class_images
from core.train.data.items import build_items
from core.train.model.loading import load_components
from core.train.outputs.sampling import SampleError, render_samples
from tests.conftest import write_image

# every test renders with a tiny pipeline: functional
pytestmark = pytest.mark.slow

PROMPTS = ["a red circle --w 64 --h 96 --s 2 --d 5", "a blue square --n green --s 2 --l 3.5"]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_render_samples_writes_named_pngs_and_restores_train_mode(tmp_path, tiny_models, family):
    components = load_components(str(tiny_models(family)))
    components.denoiser.train()
    results = render_samples(components, PROMPTS, step=12, out_dir=tmp_path / "samples", default_size=64, seed=7)
    assert [r.path.name for r in results] == ["step000012_p00.png", "step000012_p01.png"]
    assert [r.prompt for r in results] == ["a red circle", "a blue square"]
    with Image.open(results[0].path) as image:
        assert image.size == (64, 96)
        assert image.text["parameters"] == PROMPTS[0]
    with Image.open(results[1].path) as image:
        assert image.size == (64, 64)  # the default size when --w/--h are left out
    assert components.denoiser.training and not components.vae.training
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "samples").iterdir())

    again = render_samples(components, PROMPTS[:1], step=13, out_dir=tmp_path / "samples", default_size=64)
    same = np.asarray(Image.open(again[0].path)), np.asarray(Image.open(results[0].path))
    np.testing.assert_array_equal(*same)  # --d fixes the seed


def test_render_one_prompt_by_index(tmp_path, tiny_models):
    components = load_components(str(tiny_models("sd1")))
    results = render_samples(components, PROMPTS, step=1, out_dir=tmp_path, default_size=64, indices=[1])
    assert [r.prompt_index for r in results] == [1] and results[0].path.name == "step000001_p01.png"


def test_failing_sample_raises_a_clear_error_and_restores_state(tmp_path, tiny_models, monkeypatch):
    components = load_components(str(tiny_models("sd1")))
    components.denoiser.train()

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(components.denoiser, "forward", out_of_memory)
    with pytest.raises(SampleError, match=r"sample prompt 0 .*step 3 failed: RuntimeError: CUDA out of memory"):
        render_samples(components, PROMPTS, step=3, out_dir=tmp_path, default_size=64)
    assert components.denoiser.training
    assert not list(tmp_path.glob("*.png"))


def test_bad_prompt_line_is_a_user_error(tmp_path, tiny_models):
    components = load_components(str(tiny_models("sd1")))
    with pytest.raises(UserError, match="--w"):
        render_samples(components, ["a cat --w 33"], step=0, out_dir=tmp_path)


def _dataset(tmp_path, class_images: int):
    for i in range(2):
        write_image(tmp_path / "data" / "3_sks dog" / f"i{i}.png", (64, 64))
    for i in range(class_images):
        write_image(tmp_path / "reg" / "1_dog" / f"c{i}.png", (64, 64), (0, 0, 200))
    subsets = [{"path": str(tmp_path / "data" / "3_sks dog"), "repeats": 3, "token": "sks dog", "is_reg": False}]
    if class_images:
        subsets.append({"path": str(tmp_path / "reg" / "1_dog"), "repeats": 1, "token": "dog", "is_reg": True})
    return build_items({"dataset": {"subsets": subsets}}, {"resolution": 64, "min_bucket_reso": 64})


def test_missing_class_images_are_generated_into_the_run_folder(tmp_path, tiny_models):
    components = load_components(str(tiny_models("sd1")))
    data = _dataset(tmp_path, class_images=1)
    reg_before = sorted(p.name for p in (tmp_path / "reg").rglob("*"))
    run = tmp_path / "run"
    paths = prepare_class_images(components, data, run, "a dog", wanted=4, steps=2, size=32)
    assert len(paths) == 4 and len(data.class_items) == 4
    generated = sorted((run / "class_images").glob("*.png"))
    assert len(generated) == 3
    assert {i.caption for i in data.class_items} == {"dog", "a dog"}
    assert sorted(p.name for p in (tmp_path / "reg").rglob("*")) == reg_before  # the user's folder is untouched

    resumed = _dataset(tmp_path, class_images=1)
    again = prepare_class_images(components, resumed, run, "a dog", wanted=4, steps=2, size=32)
    assert sorted(map(str, again)) == sorted(map(str, paths))  # reused, nothing new generated
    assert len(sorted((run / "class_images").glob("*.png"))) == 3


def test_class_images_without_prompt_or_folder_is_a_user_error(tmp_path, tiny_models):
    components = load_components(str(tiny_models("sd1")))
    data = _dataset(tmp_path, class_images=0)
    with pytest.raises(UserError, match=r"method.class_prompt"):
        prepare_class_images(components, data, tmp_path / "run", "", wanted=2)


def test_ss_picks_kohyas_sampler_per_prompt_and_clip_skip_reaches_the_pipeline(tmp_path, tiny_models):
    import numpy as np
    from PIL import Image

    from core.train.outputs.sampling import sampler_scheduler

    components = load_components(str(tiny_models("sd1")))
    base = components.scheduler or components.noise_scheduler
    assert type(sampler_scheduler("k_euler_a", base)).__name__ == "EulerAncestralDiscreteScheduler"
    assert sampler_scheduler("dpmsolver++", base).config.algorithm_type == "dpmsolver++"
    assert sampler_scheduler("default", base) is base
    lines = ["a red cube --w 64 --h 64 --s 4 --d 3 --ss ddim", "a red cube --w 64 --h 64 --s 4 --d 3 --ss euler_a", "a red cube --w 64 --h 64 --s 4 --d 3"]
    results = render_samples(components, lines, step=1, out_dir=tmp_path / "a", default_size=64, sampler="ddim")
    images = [np.asarray(Image.open(r.path), dtype=np.float32) for r in results]
    assert np.abs(images[0] - images[1]).max() > 0  # another sampler, another image
    np.testing.assert_array_equal(images[0], images[2])  # no --ss: the run's sampler (ddim here)
    skipped = render_samples(components, lines[:1], step=1, out_dir=tmp_path / "b", default_size=64, sampler="ddim", clip_skip=2)
    assert np.abs(np.asarray(Image.open(skipped[0].path), dtype=np.float32) - images[0]).max() > 0
