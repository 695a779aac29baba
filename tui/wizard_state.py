"""The wizard's model: what the user chose so far, checked step by step. No Textual here.

Each ``check_*`` raises UserError with the sentence the wizard shows under the step; the
screen enables Next only when the current step's check passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.dataset.buckets import BUCKET_KEYS
from core.errors import UserError
from core.model_configs import NATIVE_RESOLUTION
from core.settings import FAMILIES, METHODS, SCHEMA, SETTINGS, defaults, optimizer_learning_rate

STEPS = ("Model", "Dataset", "Method", "Recipe", "Schedule", "Samples", "Review")

METHOD_TEXT = {
    "lora": ("LoRA", "a small add-on file (a few MB) for a subject or a style; the least memory and the fastest; loads in A1111/ComfyUI"),
    "dreambooth": ("DreamBooth", "trains the whole UNet on a subject, with class images to keep the rest; most faithful, needs the most VRAM and disk"),
    "finetune": ("Full fine-tune", "all weights on a large captioned dataset to change the model's look; big GPUs, hours to days"),
    "textual_inversion": ("Textual inversion", "learns only a new word's embedding (KBs); weakest, but tiny and works on small GPUs"),
}

#: The [settings] keys the recipe step shows first; the rest follow in schema order.
MAIN_SETTINGS = (
    "mixed_precision", "gradient_checkpointing", "optimizer", "batch_size", "resolution", "cache_latents",
    "cache_text_encoder_outputs", "train_text_encoder", "lora_rank", "lora_alpha",
)


def setting_order() -> list[str]:
    """Every [settings] key, the main ones first (``recipe`` is implied by the choice)."""
    rest = [k for k in SETTINGS if k not in MAIN_SETTINGS and k != "recipe"]
    return list(MAIN_SETTINGS) + rest


@dataclass
class WizardState:
    """The choices of the wizard; ``to_config`` turns them into a RunConfig."""

    gpus: Any
    name: str = ""
    model: str = ""
    family: str | None = None
    dataset: str = ""
    reg_dataset: str = ""
    scan: Any = None
    repeats: dict[str, int] = field(default_factory=dict)
    method: str = "lora"
    recipe: str = ""
    settings: dict[str, Any] = field(default_factory=lambda: defaults("settings"))
    schedule: dict[str, Any] = field(default_factory=lambda: defaults("schedule"))
    schedule_edited: set[str] = field(default_factory=set)
    recipe_schedule: dict[str, Any] = field(default_factory=dict)
    schedule_implied: dict[str, Any] = field(default_factory=lambda: defaults("schedule"))
    prompts: list[str] = field(default_factory=list)
    sampler: str = SCHEMA["samples"]["sampler"].default
    logging: dict[str, Any] = field(default_factory=lambda: defaults("logging"))
    price_per_gpu_hour: float | None = None
    config_path: str = ""
    keep_settings: bool = False
    field_errors: dict[str, str] = field(default_factory=dict)
    base_dir: Path = field(default_factory=Path.cwd)

    # ---- step 1: model
    def set_model(self, text: str) -> str:
        """Take a model path, hub id or family name; return the detected family (UserError when it cannot be)."""
        from core.model_family import detect_family

        text = text.strip()
        self.model, self.family = text, None
        if not text:
            raise UserError("no model given; type a diffusers folder, a .safetensors file, a hub id, or a family (sd1, sd2, sdxl) to plan only")
        self.family = detect_family(self._path_text(text) if not self.planning_only else text)
        if not self.recipe and not self.keep_settings:
            self.settings["resolution"] = NATIVE_RESOLUTION[self.family]
        return self.family

    @property
    def planning_only(self) -> bool:
        """True when the model is only a family name (nothing to train)."""
        return self.model in FAMILIES

    def check_model(self) -> None:
        if not self.family:
            self.set_model(self.model)

    # ---- step 2: dataset
    def run_scan(self) -> Any:
        """Scan the dataset (and the class folder) read-only and return the scan; the state is not changed."""
        from core.dataset.scan import scan_dataset

        if not self.dataset.strip():
            raise UserError("no dataset folder given; type the folder that holds <repeats>_<token> subfolders of images")
        reg = self._path_text(self.reg_dataset) if self.reg_dataset.strip() else None
        bucket_settings = {k: self.settings[k] for k in BUCKET_KEYS}
        return scan_dataset(self._path_text(self.dataset), reg, resolution=int(self.settings["resolution"]), bucket_settings=bucket_settings)

    def scan_dataset(self) -> Any:
        """Scan and keep the result (the edited repeats start over)."""
        self.use_scan(self.run_scan())
        return self.scan

    def use_scan(self, scan: Any) -> None:
        """Keep a scan; the edited repeats start over. Without prompts yet, one is offered from the token."""
        self.scan = scan
        self.repeats = {}
        token = next((s.token for s in scan.subsets if not s.is_reg and s.token), "") if scan is not None else ""
        if token and not self.prompts:
            self.prompts = [f"a photo of {token} --d 1"]

    def set_repeats(self, subset: str, value: str) -> None:
        """Change a subset's repeats (UserError for anything but a whole number ≥ 1)."""
        try:
            number = int(value)
        except ValueError:
            raise UserError(f"repeats of subset '{subset}' must be a whole number of at least 1, not {value!r}") from None
        self.scan.with_repeats({subset: number})
        self.repeats[subset] = number

    @property
    def dataset_scan(self) -> Any:
        """The scan with the edited repeats."""
        return self.scan.with_repeats(self.repeats) if self.scan is not None and self.repeats else self.scan

    def check_dataset(self) -> None:
        if self.scan is None:
            raise UserError("the dataset has not been scanned yet; type its folder and press Enter")
        errors = [p for p in self.scan.problems if p.severity == "error"]
        if errors:
            raise UserError(f"{errors[0].message}: {errors[0].fix}")
        if self.method == "dreambooth" and self.settings.get("prior_loss_weight", 0) > 0 and self.reg_dataset and not self.scan.reg_images:
            raise UserError("the class folder has no images; add class images or clear the class folder")

    # ---- step 3: method
    def check_method(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"method {self.method!r} is unknown; pick one of {', '.join(METHODS)}")

    # ---- step 4: recipe
    def recipes(self) -> list[Any]:
        """Every recipe for the family and method, judged on the GPUs: fitting ones first, fastest first."""
        from core.plan.picker import rank_recipes
        from core.recipes import load_recipes

        return rank_recipes(self.family or "sd1", self.method, self.gpus, load_recipes(), shape=self.shape())

    def shape(self) -> Any:
        """The run's shape for the fit (prior preservation with the class folder's images), as the plan has it."""
        from core.plan.picker import run_shape

        return run_shape(self.method, self.scan.reg_images if self.scan is not None else 0, {"num_processes": max(1, self.gpus.count)})

    def choose_recipe(self, fit: Any) -> None:
        """Start the settings from a recipe (the user's edits are replaced)."""
        self.recipe = fit.name
        self.settings = dict(fit.settings)
        self.recipe_schedule = dict(getattr(fit.recipe, "schedule", {}) or {})
        self.keep_settings = False
        self.sync_schedule()

    def sync_schedule(self) -> None:
        """The learning rate, text-encoder rate, scheduler and warm-up still at their last default
        follow the method, family, optimizer and recipe (core/plan/learning_rates.py)."""
        from core.plan.learning_rates import schedule_defaults

        implied = schedule_defaults(self.family or "sd1", self.method, str(self.settings["optimizer"])) | self.recipe_schedule
        for key, value in implied.items():
            # a value the user typed, or one set from a loaded config, is not a default: it stays
            if key not in self.schedule_edited and self.schedule.get(key) == self.schedule_implied.get(key):
                self.schedule[key] = value
                self.schedule_implied[key] = value

    def set_setting(self, key: str, value: Any) -> None:
        """Change one [settings] value (UserError naming the setting and the rule)."""
        try:
            checked = SETTINGS[key].check(value)
        except ValueError as exc:
            raise UserError(f"setting {key}: {exc}; {SETTINGS[key].help}") from None
        changed = checked != self.settings.get(key)
        self.settings[key] = checked
        rule = optimizer_learning_rate(checked) if key == "optimizer" else None
        if changed and rule is not None:
            self.schedule["learning_rate"] = rule

    def judge(self) -> Any:
        """The current settings judged on the smallest GPU (RecipeFit: estimate, fits, speed)."""
        from core.plan.picker import judge

        return judge(self.family or "sd1", self.method, self.settings, self.gpus, shape=self.shape())

    def check_recipe(self) -> None:
        for key, value in self.settings.items():
            if key in SETTINGS:
                self.set_setting(key, value)
        fit = self.judge()
        if fit.fits is False:
            from core.plan.picker import suggest_when_nothing_fits

            need = fit.estimate.total_bytes / 1024**3
            have = self.gpus.smallest.vram_total_bytes / 1024**3
            tips = suggest_when_nothing_fits(self.family or "sd1", self.method, self.gpus, [], self.settings, self.shape())
            tip = tips[0] if tips else "pick a recipe higher in the list"
            raise UserError(f"these settings need about {need:.1f} GiB but the GPU has {have:.1f} GiB (with 10% headroom); {tip}")

    # ---- step 5: schedule
    def set_schedule(self, key: str, value: Any) -> None:
        """Change one [schedule] value (UserError naming it and the rule)."""
        setting = SCHEMA["schedule"][key]
        try:
            checked = setting.check(value)
        except ValueError as exc:
            raise UserError(f"schedule {key}: {exc}; {setting.help}") from None
        if checked != self.schedule.get(key):
            self.schedule_edited.add(key)
        self.schedule[key] = checked

    def set_price(self, text: str) -> None:
        """Price per GPU-hour for the cost column (empty: none)."""
        text = text.strip().lstrip("$")
        if not text:
            self.price_per_gpu_hour = None
            return
        try:
            self.price_per_gpu_hour = float(text)
        except ValueError:
            raise UserError(f"price {text!r} is not a number; type the price of one GPU-hour, e.g. 0.79, or leave it empty") from None
        if self.price_per_gpu_hour < 0:
            raise UserError("the price per GPU-hour cannot be negative; type e.g. 0.79 or leave it empty")

    def check_schedule(self) -> None:
        if int(self.schedule["epochs"]) <= 0 and int(self.schedule["max_steps"]) <= 0:
            raise UserError("the run has no length; give epochs (epoch mode) or max_steps (step mode) above 0")

    def plan(self) -> Any:
        """The plan for the current choices (make_plan), with the GPU-count table."""
        from core.plan.planner import make_plan

        if self.scan is None:
            raise UserError("the dataset has not been scanned yet; go back to Dataset and give its folder")
        return make_plan(self.to_config(), self.dataset_scan, self.gpus, price_per_gpu_hour=self.price_per_gpu_hour)

    # ---- step 6: samples
    def set_logging(self, key: str, value: Any) -> None:
        """TensorBoard on/off or the W&B project (UserError when W&B is asked for but not installed)."""
        from core.launch.preflight import check_wandb

        try:
            checked = SCHEMA["logging"][key].check(value)
        except ValueError as exc:
            raise UserError(f"logging {key}: {exc}") from None
        check_wandb({key: checked})
        self.logging[key] = checked

    def set_sampler(self, value: Any) -> None:
        """The sampler of prompts without ``--ss`` (kohya's names)."""
        try:
            self.sampler = SCHEMA["samples"]["sampler"].check(value)
        except ValueError as exc:
            raise UserError(f"sampler: {exc}") from None

    def set_prompts(self, text: str) -> None:
        """One prompt a line in kohya syntax (``--w --h --s --d --l --n``); blank lines are skipped."""
        from core.kohya import parse_prompt_line

        prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
        for n, line in enumerate(prompts, 1):
            try:
                parse_prompt_line(line)
            except UserError as exc:
                raise UserError(f"sample prompt {n}: {exc}") from None
        self.prompts = prompts

    def check_samples(self) -> None:
        if int(self.schedule["sample_every_steps"]) > 0 and not self.prompts:
            raise UserError("samples are on but there is no prompt; add a prompt or set 'every N steps' to 0")

    # ---- step 7: review
    def default_name(self) -> str:
        """``<first subset's token>-<method>``, e.g. ``sks-dog-lora``."""
        from core.runs import slug

        scan = self.dataset_scan
        token = next((s.token for s in scan.subsets if not s.is_reg and s.token), "") if scan is not None else "" if scan is not None else ""
        return slug(f"{token}-{self.method}".replace("_", "-").replace(" ", "-").strip("-")) or "run"

    def check_review(self) -> None:
        if not self.name.strip():
            raise UserError("the run has no name; type one, e.g. sks-dog-lora")
        if not self.config_path.strip():
            raise UserError("no config file given; type where run.toml should be saved, e.g. sks-dog-lora.toml")

    def check_launch(self) -> None:
        """What Launch needs beyond a valid config: real weights."""
        if self.planning_only:
            raise UserError(f"'{self.model}' is a family for planning only; go back to Model and give a model folder or file to train")

    def check(self, step: int) -> None:
        """Check one step (0-based); UserError with the sentence to show (a field the user left invalid first)."""
        for key, message in self.field_errors.items():
            if key.startswith(STEPS[step] + ":"):
                raise UserError(message)
        getattr(self, f"check_{STEPS[step].lower()}")()

    def to_config(self) -> Any:
        """The RunConfig these choices make (core.config)."""
        from core.config import new_config

        scan = self.dataset_scan
        subsets = scan.subset_configs() if scan is not None else []
        self.sync_schedule()
        return new_config(
            name=self.name.strip() or "run",
            model_path=self._path_text(self.model) if not self.planning_only else "",
            family=self.family or "sd1",
            method=self.method,
            subsets=subsets,
            settings=dict(self.settings, recipe=self.recipe),
            schedule=dict(self.schedule),
            prompts=list(self.prompts),
            sampler=self.sampler,
            logging=dict(self.logging),
            distributed={"num_processes": max(1, self.gpus.count)},
        )

    def resolved_config_path(self) -> Path:
        """Where Save and Launch write run.toml."""
        return Path(self._path_text(self.config_path))

    def _path_text(self, text: str) -> str:
        """A path typed relative to where sdtui started, made absolute when it exists there."""
        path = Path(text.strip()).expanduser()
        if not path.is_absolute() and (self.base_dir / path).exists():
            return str((self.base_dir / path).resolve())
        return str(path) if path.is_absolute() else text.strip()
