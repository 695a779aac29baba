"""The text-encoder output cache and DreamBooth's class images: shared across DDP ranks, reused across runs, never redone on resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit
import torch

from core.train.data.class_images import prepare_class_images, share
from core.train.data.items import build_items, distinct_captions
from core.train.data.text_cache import cache_text_outputs
from core.train.model.loading import load_components
from core.train.model.text import encode_captions
from tests.train_helpers import launch, make_run, metrics, status


def _items(data: Path, **settings):
    subsets = [{"path": str(p), "repeats": 1, "token": "sks dog", "is_reg": False} for p in sorted(data.iterdir()) if p.is_dir()]
    return build_items({"dataset": {"subsets": subsets}}, {"resolution": 64, "min_bucket_reso": 64, **settings})


def test_text_outputs_are_reused_by_the_next_run_and_redone_for_another_clip_skip(tmp_path, tiny_models, kohya_dataset):
    components = load_components(str(tiny_models("sdxl")))
    data = kohya_dataset(((1, "sks dog", 3),))
    folder = tmp_path / "text"

    first = cache_text_outputs(components, _items(data), "cpu", torch.float32, folder)
    again = cache_text_outputs(components, _items(data), "cpu", torch.float32, folder)
    skipped = cache_text_outputs(components, _items(data, clip_skip=3), "cpu", torch.float32, folder)

    captions = distinct_captions(_items(data))
    assert (first.encoded, first.reused, len(first)) == (len(captions), 0, len(captions))
    assert (again.encoded, again.reused) == (0, len(captions))  # a second run on the same captions encodes nothing
    assert skipped.encoded == len(captions)  # another clip_skip gives other outputs
    direct = encode_captions(components, captions)
    for n, caption in enumerate(captions):
        assert torch.equal(again.entries[caption]["hidden_states"], direct.prompt_embeds[n])
        assert torch.equal(again.entries[caption]["pooled"], direct.pooled_prompt_embeds[n])


def test_a_damaged_text_cache_file_is_encoded_again(tmp_path, tiny_models, kohya_dataset):
    components = load_components(str(tiny_models("sd1")))
    data = kohya_dataset(((1, "sks dog", 2),))
    folder = tmp_path / "text"
    cache_text_outputs(components, _items(data), "cpu", torch.float32, folder)
    files = sorted(folder.rglob("*.safetensors"))
    files[0].write_bytes(b"\x00junk")

    again = cache_text_outputs(components, _items(data), "cpu", torch.float32, folder)

    assert (again.encoded, again.reused) == (1, len(files) - 1)
    captions = distinct_captions(_items(data))
    direct = encode_captions(components, captions)
    assert all(torch.equal(again.entries[c]["hidden_states"], direct.prompt_embeds[n]) for n, c in enumerate(captions))


def test_class_image_batches_are_shared_round_robin_and_cover_every_image_once():
    shares = [share(3, 10, 4, rank, 2) for rank in range(2)]
    assert shares == [[(3, 4), (11, 2)], [(7, 4)]]
    assert share(0, 3, 4, 1, 2) == []  # one batch: the second rank has nothing to do


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_two_processes_generate_class_images_and_text_outputs_in_shares_and_a_resume_redoes_neither(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset(((1, "sks dog", 2),))
    cache = tmp_path / "cache"
    run = make_run(
        tmp_path / "run",
        tiny_models("sd1"),
        data,
        "sd1",
        "dreambooth",
        settings={"cache_latents": True, "cache_text_encoder_outputs": True, "class_images_per_instance": 4},
        schedule={"max_steps": 1, "epochs": 0, "save_every_steps": 1},
        method_extra={"class_prompt": "a dog"},
        processes=2,
    )

    first = launch(run, 2, env={"XDG_CACHE_HOME": str(cache)})

    assert first.returncode == 0, first.stderr[-3000:]
    generated = sorted((run / "class_images").glob("class_*.png"))
    assert [p.name for p in generated] == [f"class_{n:05d}.png" for n in range(8)]  # two batches of 4, one per rank
    classes = next(p for p in metrics(run, "phase") if p["phase"] == "class_images" and p["state"] == "done")
    assert classes["done"] == 8
    captions = len(distinct_captions(_items(data))) + 1  # and the class prompt
    text = next(p for p in metrics(run, "phase") if p["phase"] == "cache_text" and p["state"] == "done")
    assert (text["encoded"], text["reused"], text["entries"], text["processes"]) == ((captions + 1) // 2, 0, captions, 2)
    assert len(list((cache / "sdtui" / "text").rglob("*.safetensors"))) == captions  # rank 1 wrote the rest

    # the same images as one process makes (each batch is seeded by its first image's number)
    torch.set_num_threads(1)
    alone = _items(data)
    prepare_class_images(load_components(str(tiny_models("sd1"))), alone, tmp_path / "alone", "a dog", 8, seed=7, size=64)
    assert [p.read_bytes() for p in sorted((tmp_path / "alone" / "class_images").glob("*.png"))] == [p.read_bytes() for p in generated]

    stamps = [p.stat().st_mtime_ns for p in generated]
    doc = tomlkit.parse((run / "run.toml").read_text())
    doc["schedule"]["max_steps"] = 2  # go on from the step-1 checkpoint
    (run / "run.toml").write_text(tomlkit.dumps(doc))
    second = launch(run, 2, env={"XDG_CACHE_HOME": str(cache)})

    assert second.returncode == 0, second.stderr[-3000:]
    assert status(run)["step"] == 2
    assert [p.stat().st_mtime_ns for p in sorted((run / "class_images").glob("class_*.png"))] == stamps  # none generated again
    again = [p for p in metrics(run, "phase") if p["phase"] == "cache_text" and p["state"] == "done"][-1]
    assert (again["encoded"], again["reused"], again["entries"]) == (0, (captions + 1) // 2, captions)


def test_text_cache_entries_of_a_bf16_run_are_stored_in_bf16_at_half_the_size(tmp_path, tiny_models, kohya_dataset):
    components = load_components(str(tiny_models("sdxl")))
    data = kohya_dataset(((1, "sks dog", 2),))
    full = cache_text_outputs(components, _items(data), "cpu", torch.float32, tmp_path / "fp32")
    half = cache_text_outputs(components, _items(data), "cpu", torch.bfloat16, tmp_path / "bf16")

    caption = distinct_captions(_items(data))[0]
    assert full.entries[caption]["hidden_states"].dtype == torch.float32  # an fp32 run caches what it computes
    assert half.entries[caption]["hidden_states"].dtype == torch.bfloat16
    assert half.entries[caption]["pooled"].dtype == torch.bfloat16
    full_bytes = sum(p.stat().st_size for p in (tmp_path / "fp32").rglob("*.safetensors"))
    half_bytes = sum(p.stat().st_size for p in (tmp_path / "bf16").rglob("*.safetensors"))
    assert half_bytes < 0.6 * full_bytes


def test_text_cache_on_disk_holds_paths_and_reads_each_batch_from_the_files(tmp_path, tiny_models, kohya_dataset):
    components = load_components(str(tiny_models("sd1")))
    data = kohya_dataset(((1, "sks dog", 2),))
    folder = tmp_path / "text"
    in_memory = cache_text_outputs(components, _items(data), "cpu", torch.float32, folder)
    on_disk = cache_text_outputs(components, _items(data), "cpu", torch.float32, folder, in_memory=False)

    captions = distinct_captions(_items(data))
    assert on_disk.entries == {} and len(on_disk) == len(captions) and on_disk.reused == len(captions)
    assert torch.equal(on_disk.stacked(captions)["hidden_states"], in_memory.stacked(captions)["hidden_states"])
    on_disk.files[captions[0]].write_bytes(b"\x00junk")  # damaged while the run reads it: one sentence, not garbage
    with pytest.raises(RuntimeError, match="was damaged while this run read it"):
        on_disk.stacked(captions)
