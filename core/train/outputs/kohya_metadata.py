"""The metadata of a kohya LoRA file, as sd-scripts' ``train_network.py`` writes it.

* ``ss_*``: every key sd-scripts writes (its ``train_network.py``: the training arguments, both
  its dataset-config and its folder-dataset forms of the dataset description, model names and
  hashes, start/finish times), filled from the run. Options sdtui does not have carry the value
  sd-scripts writes when they are off (``None``, ``False``, its defaults), so a reader sees the
  same keys as in an sd-scripts file.
* ``sshs_model_hash`` / ``sshs_legacy_hash``: sd-scripts' precalculated hashes (what
  sd-webui-additional-networks and A1111 index by): the SHA-256 of the tensor data and the
  legacy 64 KiB-at-1 MiB hash, both of the safetensors bytes with only the ``ss_*`` metadata.
* ``modelspec.*``: the Stability AI model spec 1.0.1 keys sd-scripts' ``sai_model_spec.py``
  writes for a LoRA.

The values that name the model family (``ss_base_model_version``, ``ss_v2``, the
``modelspec`` architecture, implementation and prediction type) are the family runtime's
(``kohya_metadata``), handed in as :attr:`RunFacts.family_values`.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.settings import subset_settings

MODELSPEC_VERSION = "1.0.1"


@dataclass(frozen=True)
class RunFacts:
    """What the trainer knows about the run that the metadata records."""

    family: str
    v_prediction: bool
    model_path: str
    vae_path: str
    name: str
    started_at: float
    session_id: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    world: int
    optimizer: str
    network_module: str
    network_args: Mapping[str, Any]
    #: The family's ``ss_*`` / ``modelspec.*`` values (``FamilyRuntime.kohya_metadata``).
    family_values: Mapping[str, str]


def tag_frequency(captions_by_dir: Mapping[str, list[str]]) -> dict[str, dict[str, int]]:
    """sd-scripts' ``ss_tag_frequency``: per image folder, how many captions have each comma-separated tag (lower case)."""
    result: dict[str, dict[str, int]] = {}
    for folder, captions in captions_by_dir.items():
        counts: Counter[str] = Counter(result.get(folder, {}))
        for caption in captions:
            counts.update(tag.strip().lower() for tag in caption.split(",") if tag.strip())
        result[folder] = dict(counts)
    return result


def _dirs(subsets: list[dict[str, Any]], counts: Mapping[int, int], reg: bool) -> dict[str, dict[str, int]]:
    info: dict[str, dict[str, int]] = {}
    for index, subset in enumerate(subsets):
        if bool(subset.get("is_reg")) != reg:
            continue
        name = base = os.path.basename(str(subset["path"]).rstrip("/"))
        number = 2
        while name in info:
            name, number = f"{base} ({number})", number + 1
        info[name] = {"n_repeats": int(subset["repeats"]), "img_count": counts.get(index, 0)}
    return info


def _file_hashes(path: str) -> dict[str, str]:
    """A1111's old (``model_hash``) and new (SHA-256) hashes of a model file; nothing for a folder or hub id."""
    file = Path(path)
    if not file.is_file():
        return {}
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        handle.seek(0x100000)
        legacy = hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]
        handle.seek(0)
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"hash": legacy, "sha256": digest.hexdigest()}


def ss_metadata(facts: RunFacts, settings: Mapping[str, Any], schedule: Mapping[str, Any], train_data: Any, subsets: list[dict[str, Any]]) -> dict[str, str]:
    """Every ``ss_*`` key sd-scripts' train_network.py writes at the start of training (values as strings)."""
    s, sched = settings, schedule
    lr = float(sched["learning_rate"])
    items = train_data.items
    per_subset = Counter(item.subset for item in items) + Counter(item.subset for item in train_data.class_items)
    captions: dict[str, list[str]] = {}
    for item in items:
        captions.setdefault(os.path.basename(str(subsets[item.subset]["path"]).rstrip("/")), []).append(item.caption)
    tags = tag_frequency(captions)
    dataset_dirs = _dirs(subsets, per_subset, reg=False)
    reg_dirs = _dirs(subsets, per_subset, reg=True)
    counts = train_data.bucket_counts()
    buckets = {"buckets": {i: {"resolution": list(bucket), "count": counts[bucket]} for i, bucket in enumerate(sorted(counts))}}
    errors = [abs(item.width / item.height - item.bucket[0] / item.bucket[1]) for item in items]
    buckets["mean_img_ar_error"] = sum(errors) / len(errors) if errors else 0
    resolution = int(s["resolution"])
    num_train = train_data.items_per_epoch
    num_reg = sum(item.repeats for item in train_data.class_items)
    batch = int(s["batch_size"])
    own = [subset_settings(s, sub) for sub in subsets]
    subset_meta = [
        {
            "img_count": per_subset.get(i, 0),
            "num_repeats": int(sub["repeats"]),
            "color_aug": False,
            "flip_aug": bool(own[i]["flip_aug"]),
            "random_crop": bool(s["random_crop"]),
            "shuffle_caption": bool(own[i]["shuffle_caption"]),
            "keep_tokens": int(own[i]["keep_tokens"]),
            "keep_tokens_separator": "",
            "secondary_separator": None,
            "enable_wildcard": False,
            "caption_prefix": s["caption_prefix"] or None,
            "caption_suffix": s["caption_suffix"] or None,
            "resize_interpolation": "lanczos",
            "image_dir": os.path.basename(str(sub["path"]).rstrip("/")),
            "class_tokens": sub.get("token") or None,
            "is_reg": bool(sub.get("is_reg")),
        }
        for i, sub in enumerate(subsets)
    ]
    datasets = [
        {
            "is_dreambooth": True,
            "batch_size_per_device": batch,
            "num_train_images": num_train,
            "num_reg_images": num_reg,
            "resolution": [resolution, resolution],
            "enable_bucket": bool(s["enable_bucket"]),
            "min_bucket_reso": int(s["min_bucket_reso"]),
            "max_bucket_reso": int(s["max_bucket_reso"]),
            "tag_frequency": tags,
            "bucket_info": buckets,
            "resize_interpolation": "lanczos",
            "subsets": subset_meta,
        }
    ]
    te_lr = sched.get("text_encoder_lr") or lr
    meta: dict[str, Any] = {
        "ss_session_id": facts.session_id,
        "ss_training_started_at": facts.started_at,
        "ss_output_name": facts.name,
        "ss_learning_rate": lr,
        "ss_text_encoder_lr": te_lr if s["train_text_encoder"] else None,
        "ss_unet_lr": lr,
        "ss_num_train_images": num_train,
        "ss_num_validation_images": 0,
        "ss_num_reg_images": num_reg,
        "ss_num_batches_per_epoch": facts.steps_per_epoch * int(sched["gradient_accumulation"]),
        "ss_num_epochs": facts.epochs,
        "ss_gradient_checkpointing": bool(s["gradient_checkpointing"]),
        "ss_gradient_accumulation_steps": int(sched["gradient_accumulation"]),
        "ss_max_train_steps": facts.total_steps,
        "ss_lr_warmup_steps": int(sched["lr_warmup_steps"]),
        "ss_lr_scheduler": sched["lr_scheduler"],
        "ss_network_module": facts.network_module,
        "ss_network_dim": int(s["lora_rank"]),
        "ss_network_alpha": float(s["lora_alpha"]),
        "ss_network_dropout": float(s["lora_dropout"]) or None,
        "ss_mixed_precision": s["mixed_precision"],
        "ss_full_fp16": False,
        "ss_full_bf16": bool(s["full_bf16"]),
        "ss_v2": facts.family_values["ss_v2"],
        "ss_v_parameterization": facts.v_prediction,
        "ss_base_model_version": facts.family_values["ss_base_model_version"],
        "ss_clip_skip": int(s["clip_skip"]) if int(s["clip_skip"]) > 1 else None,
        "ss_max_token_length": None,
        "ss_cache_latents": bool(s["cache_latents"]),
        "ss_seed": int(sched["seed"]),
        "ss_lowram": False,
        "ss_noise_offset": float(s["noise_offset"]) or None,
        "ss_multires_noise_iterations": None,
        "ss_multires_noise_discount": 0.3,
        "ss_adaptive_noise_scale": None,
        "ss_zero_terminal_snr": False,
        "ss_training_comment": None,
        "ss_sd_scripts_commit_hash": "(unknown)",
        "ss_optimizer": facts.optimizer,
        "ss_max_grad_norm": float(s["max_grad_norm"]),
        "ss_caption_dropout_rate": float(s["caption_dropout_rate"]),
        "ss_caption_dropout_every_n_epochs": 0,
        "ss_caption_tag_dropout_rate": float(s["caption_tag_dropout_rate"]),
        "ss_face_crop_aug_range": None,
        "ss_prior_loss_weight": float(s["prior_loss_weight"]),
        "ss_min_snr_gamma": float(s["min_snr_gamma"]) or None,
        "ss_scale_weight_norms": None,
        "ss_ip_noise_gamma": None,
        "ss_debiased_estimation": False,
        "ss_noise_offset_random_strength": False,
        "ss_ip_noise_gamma_random_strength": False,
        "ss_loss_type": "l2",
        "ss_huber_schedule": "snr",
        "ss_huber_scale": 1.0,
        "ss_huber_c": 0.1,
        "ss_fp8_base": False,
        "ss_fp8_base_unet": False,
        "ss_validation_seed": None,
        "ss_validation_split": 0.0,
        "ss_max_validation_steps": None,
        "ss_validate_every_n_epochs": None,
        "ss_validate_every_n_steps": None,
        "ss_resize_interpolation": "lanczos",
        "ss_datasets": json.dumps(datasets),
        "ss_tag_frequency": json.dumps(tags),
        "ss_dataset_dirs": json.dumps(dataset_dirs),
        "ss_reg_dataset_dirs": json.dumps(reg_dirs),
        "ss_bucket_info": json.dumps(buckets),
        "ss_batch_size_per_device": batch,
        "ss_total_batch_size": batch * facts.world * int(sched["gradient_accumulation"]),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_color_aug": False,
        "ss_flip_aug": bool(s["flip_aug"]),
        "ss_random_crop": bool(s["random_crop"]),
        "ss_shuffle_caption": bool(s["shuffle_caption"]),
        "ss_enable_bucket": bool(s["enable_bucket"]),
        "ss_bucket_no_upscale": bool(s["bucket_no_upscale"]),
        "ss_min_bucket_reso": int(s["min_bucket_reso"]),
        "ss_max_bucket_reso": int(s["max_bucket_reso"]),
        "ss_keep_tokens": int(s["keep_tokens"]),
        "ss_network_args": json.dumps(dict(facts.network_args)),
        "ss_sd_model_name": os.path.basename(str(facts.model_path).rstrip("/")),
    }
    model_hashes = _file_hashes(facts.model_path)
    if model_hashes:
        meta["ss_sd_model_hash"], meta["ss_new_sd_model_hash"] = model_hashes["hash"], model_hashes["sha256"]
    if facts.vae_path:
        meta["ss_vae_name"] = os.path.basename(facts.vae_path.rstrip("/"))
        vae_hashes = _file_hashes(facts.vae_path)
        if vae_hashes:
            meta["ss_vae_hash"], meta["ss_new_vae_hash"] = vae_hashes["hash"], vae_hashes["sha256"]
    return {k: str(v) for k, v in meta.items()}


def model_spec(facts: RunFacts, settings: Mapping[str, Any], saved_at: float, version: str) -> dict[str, str]:
    """The ``modelspec.*`` keys sd-scripts writes for a LoRA (``modelspec.prediction_type`` where the family has one)."""
    resolution = int(settings["resolution"])
    spec = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": facts.family_values["modelspec.architecture"],
        "modelspec.implementation": facts.family_values["modelspec.implementation"],
        "modelspec.title": facts.name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(saved_at)).isoformat(),
        "modelspec.implementation_version": f"sdtui/{version}",
    }
    if "modelspec.prediction_type" in facts.family_values:  # sd-scripts writes none for the flow families
        spec["modelspec.prediction_type"] = facts.family_values["modelspec.prediction_type"]
    if int(settings["clip_skip"]) > 1:
        spec["modelspec.encoder_layer"] = str(int(settings["clip_skip"]))
    return spec


def with_hashes(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` plus ``sshs_model_hash`` and ``sshs_legacy_hash`` as sd-scripts precalculates them."""
    from safetensors.torch import save

    training = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    data = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=training)
    size = int.from_bytes(data[:8], "little")
    buffer = io.BytesIO(data)
    buffer.seek(0x100000)
    legacy = hashlib.sha256(buffer.read(0x10000)).hexdigest()[:8]
    return {**metadata, "sshs_model_hash": hashlib.sha256(data[8 + size :]).hexdigest(), "sshs_legacy_hash": legacy}
