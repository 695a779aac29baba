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
from core.families import spec
from core.settings import (
    FAMILIES,
    METHODS,
    RECIPE_SETTINGS,
    SCHEMA,
    SETTINGS,
    SUBSET_CAPTION_OPTIONS,
    SUBSET_OPTIONS,
    bucket_problem,
    defaults,
    family_problem,
    optimizer_learning_rate,
    resolve,
)
from core.units import GIB

STEPS = ("Model", "Dataset", "Method", "Recipe", "Schedule", "Samples", "Review")

METHOD_TEXT = {
    "lora": ("LoRA", "a small add-on file (a few MB) for a subject or a style; the least memory and the fastest; loads in A1111/ComfyUI"),
    "dreambooth": ("DreamBooth", "trains the whole UNet on a subject, with class images to keep the rest; most faithful, needs the most VRAM and disk"),
    "finetune": ("Full fine-tune", "all weights on a large captioned dataset to change the model's look; big GPUs, hours to days"),
    "textual_inversion": ("Textual inversion", "learns only a new word's embedding (KBs); weakest, but tiny and works on small GPUs"),
}

#: What the method step asks for each method: its [method] keys, then its [settings] keys.
METHOD_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "lora": ((), ("lora_type", "lora_rank", "lora_alpha", "lora_targets", "lokr_factor", "conv_rank", "conv_alpha", "use_dora", "lora_dropout", "init_lora")),
    "dreambooth": (("class_prompt",), ("prior_loss_weight", "class_images_per_instance", "generate_class_images")),
    "finetune": ((), ("ema", "ema_decay")),
    "textual_inversion": (("placeholder_token",), ("ti_init_word", "ti_num_vectors")),
}
#: Every [settings] key a method step asks (the recipe step leaves them out).
METHOD_SETTINGS = tuple(key for _, keys in METHOD_FIELDS.values() for key in keys)

#: The [settings] keys the recipe step shows first; the rest follow in schema order.
MAIN_SETTINGS = (
    "mixed_precision",
    "gradient_checkpointing",
    "optimizer",
    "batch_size",
    "resolution",
    "cache_latents",
    "cache_text_encoder_outputs",
    "train_text_encoder",
)


def setting_order() -> list[str]:
    """The [settings] keys of the recipe step, the main ones first (``recipe`` is implied by the
    choice; the method's own keys are on the method step)."""
    rest = [k for k in SETTINGS if k not in MAIN_SETTINGS and k not in METHOD_SETTINGS and k != "recipe"]
    return list(MAIN_SETTINGS) + rest


def method_option_defaults() -> dict[str, Any]:
    """The [method] keys besides ``kind`` with their defaults."""
    return {key: value for key, value in defaults("method").items() if key != "kind"}


def parse_repeats(subset: str, value: str) -> int:
    """A subset's repeats from what the user typed (UserError for anything but a whole number ≥ 1)."""
    text = value.strip()
    if not text:
        raise UserError(f"the repeats of {subset} are empty; type how often each image is seen per epoch, e.g. 10")
    try:
        number = int(text)
    except ValueError:
        raise UserError(f"the repeats of {subset} must be a whole number such as 10, not '{text}'") from None
    if number < 1:
        raise UserError(f"the repeats of {subset} must be at least 1, not {number}; to leave a subset out, move its folder out of the dataset")
    return number


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
    method_options: dict[str, Any] = field(default_factory=method_option_defaults)
    method_edits: dict[str, Any] = field(default_factory=dict)
    recipe: str = ""
    settings: dict[str, Any] = field(default_factory=lambda: defaults("settings"))
    schedule: dict[str, Any] = field(default_factory=lambda: defaults("schedule"))
    schedule_edited: set[str] = field(default_factory=set)
    recipe_schedule: dict[str, Any] = field(default_factory=dict)
    schedule_implied: dict[str, Any] = field(default_factory=lambda: defaults("schedule"))
    prompts: list[str] = field(default_factory=list)
    #: The prompts last offered as the default: while ``prompts`` are still these, they follow the subject.
    prompts_offered: list[str] = field(default_factory=list)
    sampler: str = SCHEMA["samples"]["sampler"].default
    logging: dict[str, Any] = field(default_factory=lambda: defaults("logging"))
    validation: dict[str, Any] = field(default_factory=lambda: defaults("validation"))
    price_per_gpu_hour: float | None = None
    config_path: str = ""
    keep_settings: bool = False
    field_errors: dict[str, str] = field(default_factory=dict)
    base_dir: Path = field(default_factory=Path.cwd)
    caption_extension: str = field(default_factory=lambda: defaults("dataset")["caption_extension"])
    #: The model the dataset step's caption dialog offers per captioner (none: the captioner's own; the demo's tiny ones in the demo).
    captioner_models: dict[str, str] = field(default_factory=dict)
    #: [dataset] mask_dir of an opened config (kept through the wizard; "" = none).
    mask_dir: str = field(default_factory=lambda: defaults("dataset")["mask_dir"])
    #: The dataset as a config's subset list (opened from a run.toml or a kohya config), used while
    #: the dataset fields still show ``subsets_for``; editing them scans the typed folder instead.
    subsets: list[dict[str, Any]] | None = None
    subsets_for: tuple[str, str] = ("", "")
    #: Each subset's own options (caption prefix, suffix, shuffle, dropout …; core.settings.SUBSET_OPTIONS)
    #: by its resolved folder: from an opened config and the dataset step, written into its subset table.
    subset_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The GPUs this machine really has (probed once when ``gpus`` is simulated): what Launch uses.
    machine: Any = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: Any, gpus: Any, base_dir: Path) -> WizardState:
        """The wizard filled in from a run config (core.config.RunConfig, complete or not)."""
        state = cls(gpus=gpus, base_dir=base_dir)
        state.name = config.name
        state.method = config.method
        state.method_options.update({k: v for k, v in config.section("method").items() if k != "kind"})
        state.settings.update(config.settings)
        state.method_edits = {key: state.settings[key] for key in METHOD_SETTINGS}
        state.keep_settings = True
        state.recipe = str(config.settings.get("recipe") or "")
        state.schedule.update(config.schedule)
        state.price_per_gpu_hour = float(state.schedule["price_per_gpu_hour"]) or None
        state.prompts = list(config.prompts)
        state.sampler = config.section("samples")["sampler"]
        state.logging.update(config.section("logging"))
        state.caption_extension = config.section("dataset")["caption_extension"]
        state.mask_dir = config.section("dataset")["mask_dir"]
        state.validation.update(config.section("validation"))
        state.config_path = str(config.path) if config.path else ""
        state.model = config.model_path
        if state.model:
            try:
                state.set_model(state.model)
            except UserError:
                state.family = None
        state.use_subsets(config.subsets)
        return state

    def use_subsets(self, subsets: list[dict[str, Any]]) -> None:
        """Take a config's subsets as the dataset (their common folders fill the dataset fields) and scan them."""
        import os

        def common(paths: list[str]) -> str:
            return os.path.commonpath(paths) if paths else ""

        self.subsets = [dict(s) for s in subsets]
        self.subset_options = {_folder_key(s["path"]): {k: v for k, v in s.items() if k in SUBSET_OPTIONS} for s in subsets}
        self.dataset = common([str(s["path"]) for s in subsets if not s["is_reg"]])
        self.reg_dataset = common([str(s["path"]) for s in subsets if s["is_reg"]])
        self.subsets_for = (self.dataset, self.reg_dataset)
        if self.subsets:
            try:
                self.scan_dataset()
            except (UserError, OSError):
                self.scan = None

    def landing_step(self) -> int:
        """The first step that does not check out (the Review step when all do)."""
        for n in range(len(STEPS)):
            try:
                self.check(n)
            except UserError:
                return n
        return len(STEPS) - 1

    # ---- step 1: model
    def set_model(self, text: str) -> str:
        """Take a model path, hub id or family name; return the detected family (UserError when it cannot be)."""
        from core.families.detect import detect_family

        text = text.strip()
        self.model, self.family = text, None
        if not text:
            raise UserError(f"no model given; type a diffusers folder, a .safetensors file, a hub id, or a family ({', '.join(FAMILIES)}) to plan only")
        self.family = detect_family(self._path_text(text) if not self.planning_only else text)
        if not self.recipe and not self.keep_settings:
            self.settings["resolution"] = spec(self.family).native_resolution
        return self.family

    @property
    def planning_only(self) -> bool:
        """True when the model is only a family or model name such as ``flux-schnell`` (nothing to train)."""
        from core.families import variant_names

        return self.model in FAMILIES or self.model in variant_names()

    def check_model(self) -> None:
        if not self.family:
            self.set_model(self.model)

    def chosen_family(self) -> str:
        """The model's family; UserError sending the user back to the Model step when there is none yet."""
        if not self.family:
            raise UserError(f"the model family is not known yet; give the model on the Model step (a folder, a .safetensors file, a hub id or one of {', '.join(FAMILIES)})")
        return self.family

    def planned_family(self) -> str:
        """The name the estimate reads the model under: its variant where that is measured on its own
        (SD 3.5 Large, FLUX.2 klein 9B / dev), else its family."""
        from core.families import planned_as

        return planned_as(self.chosen_family(), self.model or "")

    # ---- step 2: dataset
    def run_scan(self) -> Any:
        """Scan the dataset (and the class folder) read-only and return the scan; the state is not changed."""
        from core.dataset.scan import scan_dataset

        if not self.dataset.strip():
            raise UserError("no dataset folder given; type the folder that holds <repeats>_<token> subfolders of images")
        if self.subsets and (self.dataset, self.reg_dataset) == self.subsets_for:
            from core.config import new_config
            from core.dataset.scan import scan_config

            # scan_config reads only the subsets, settings and caption extensions: the family here
            # fills new_config's field and is never read
            return scan_config(
                new_config(
                    self.name or "run",
                    "",
                    self.family or defaults("model")["family"],
                    self.method,
                    self.subsets,
                    self.settings,
                    dataset_options={"caption_extension": self.caption_extension},
                )
            )
        reg = self._path_text(self.reg_dataset) if self.reg_dataset.strip() else None
        bucket_settings = {k: self.settings[k] for k in BUCKET_KEYS}
        return scan_dataset(self._path_text(self.dataset), reg, resolution=int(self.settings["resolution"]), bucket_settings=bucket_settings)

    def scan_dataset(self) -> Any:
        """Scan and keep the result (edited repeats of subsets still there are kept)."""
        self.use_scan(self.run_scan())
        return self.scan

    def use_scan(self, scan: Any) -> None:
        """Keep a scan; the edited repeats stay (they apply to the subsets it has). The offered prompt follows the subject."""
        self.scan = scan
        self.sync_prompts()

    def subject_token(self) -> str:
        """The token of the training subset with the most items per epoch (images × repeats): the run's subject."""
        scan = self.dataset_scan
        named = [s for s in scan.subsets if not s.is_reg and s.token and s.images] if scan is not None else []
        return max(named, key=lambda s: s.items_per_epoch).token if named else ""

    def subject(self) -> str:
        """What the samples show: the textual-inversion placeholder when that is the method, else the subject token."""
        if self.method == "textual_inversion":
            token = str(self.method_options.get("placeholder_token", "")).strip()
            if token:
                return token
        return self.subject_token()

    def sync_prompts(self) -> None:
        """While the prompts are still the offered default (or none), offer ``a photo of <subject>`` again."""
        if self.prompts != self.prompts_offered:
            return
        subject = self.subject()
        self.prompts = [f"a photo of {subject} --d 1"] if subject else []
        self.prompts_offered = list(self.prompts)

    def set_repeats(self, subset: str, value: str) -> None:
        """Change a subset's repeats (UserError for anything but a whole number ≥ 1)."""
        number = parse_repeats(Path(subset).name, value)
        self.scan.with_repeats({subset: number})
        self.repeats[subset] = number

    def subset_captions(self, subset: str) -> dict[str, Any]:
        """The caption options ``subset`` trains with: its own, else [settings]'."""
        own = self.subset_options.get(_folder_key(subset), {})
        return {key: own.get(key, self.settings[key]) for key in SUBSET_CAPTION_OPTIONS}

    def set_subset_captions(self, subset: str, typed: dict[str, str]) -> None:
        """Set ``subset``'s caption options from what was typed (UserError naming the option and the
        rule); a value equal to [settings]' is not kept, so the subset follows the recipe step there."""
        values = {}
        for key, text in typed.items():
            try:
                values[key] = SUBSET_OPTIONS[key].check(text if SUBSET_OPTIONS[key].type is str else text.strip())
            except ValueError as exc:
                raise UserError(f"the caption options of {Path(subset).name}: {exc}; fix the value") from None
        own = {k: v for k, v in self.subset_options.get(_folder_key(subset), {}).items() if k not in values}
        own |= {key: value for key, value in values.items() if value != self.settings[key]}
        self.subset_options[_folder_key(subset)] = own

    @property
    def dataset_scan(self) -> Any:
        """The scan with the edited repeats of the subsets it has."""
        if self.scan is None:
            return None
        paths = {s.path for s in self.scan.subsets}
        edited = {path: n for path, n in self.repeats.items() if path in paths}
        return self.scan.with_repeats(edited) if edited else self.scan

    def check_dataset(self) -> None:
        if self.scan is None:
            raise UserError("the dataset has not been scanned yet; type its folder and press Enter")
        blocking = self.scan.blocking_problem()
        if blocking is not None:
            raise UserError(f"{blocking.message}; {blocking.fix}")
        if self.method == "dreambooth" and self.settings.get("prior_loss_weight", 0) > 0 and self.reg_dataset and not self.scan.reg_images:
            raise UserError("the class folder has no images; add class images or clear the class folder")

    # ---- step 3: method
    def set_method_field(self, key: str, value: Any) -> None:
        """Change one of the method's own values: a [method] key or a [settings] key (kept when a recipe is picked)."""
        if key in SCHEMA["method"]:
            setting = SCHEMA["method"][key]
            try:
                self.method_options[key] = setting.check(value)
            except ValueError as exc:
                raise UserError(f"{key}: {exc}; {setting.help}") from None
            self.sync_prompts()
            return
        self.set_setting(key, value)
        self.method_edits[key] = self.settings[key]

    def methods(self) -> tuple[str, ...]:
        """The methods the chosen family trains with (its spec's; every method while no family is known yet)."""
        return spec(self.family).methods if self.family in FAMILIES else METHODS

    def check_method(self) -> None:
        if self.method not in self.methods():
            raise UserError(f"method {self.method!r} is not one the {self.family or 'chosen'} family trains with; pick one of {', '.join(self.methods())}")
        if self.method == "textual_inversion":
            token = str(self.method_options.get("placeholder_token", "")).strip()
            if not token or " " in token:
                raise UserError("textual inversion learns one new word: type it as the placeholder token, e.g. <sks>, and use it in your captions and prompts")

    # ---- step 4: recipe
    def recipes(self) -> list[Any]:
        """Every recipe for the family and method, judged on the GPUs: fitting ones first, fastest first."""
        from core.plan.picker import rank_recipes
        from core.recipes import load_recipes

        return rank_recipes(self.planned_family(), self.method, self.gpus, load_recipes(), self.kept_settings(), shape=self.shape())

    def recipe_choice(self, ranked: list[Any]) -> Any:
        """The picker's choice among ``ranked`` (``recipes()``) in words (core.plan.choice.Choice), or None."""
        from core.plan.choice import choose

        return choose(self.planned_family(), self.method, self.gpus, ranked, self.kept_settings(), self.shape())

    def shape(self) -> Any:
        """The run's shape for the fit (prior preservation with the class folder's images), as the plan has it."""
        from core.plan.fit import run_shape

        return run_shape(self.method, self.scan.reg_images if self.scan is not None else 0, {"num_processes": max(1, self.gpus.count)}, self.ram_bytes(), bool(self.prompts))

    def ram_bytes(self) -> int | None:
        """The RAM the run's host memory is judged against: this machine's when its GPUs are the
        ones found here, unknown when planning for simulated GPUs (another machine)."""
        from core.gpu import machine_ram_bytes

        return None if self.gpus.simulated else machine_ram_bytes()

    def kept_settings(self) -> dict[str, Any]:
        """The settings a recipe does not change: all but its memory/speed ones (core.settings.RECIPE_SETTINGS).
        A method setting the recipe names is the recipe's starting value only until the user chose it
        (on the Method step, or in the config opened)."""
        return {key: value for key, value in self.settings.items() if key not in RECIPE_SETTINGS and key != "recipe" and (key not in METHOD_SETTINGS or key in self.method_edits)}

    def choose_recipe(self, fit: Any) -> None:
        """Take a recipe's memory/speed settings, with what the picker composed into it for these
        GPUs (a quantized base, swapped blocks, a smaller batch); the user's other settings stay
        (``kept_settings``)."""
        self.recipe = fit.name
        self.settings = fit.recipe.resolved_settings(self.kept_settings()) | dict(getattr(fit, "changes", {}))
        self.recipe_schedule = dict(getattr(fit.recipe, "schedule", {}) or {})
        self.keep_settings = False
        self.sync_schedule()

    def sync_schedule(self) -> None:
        """The learning rate, text-encoder rate, scheduler and warm-up still at their last default
        follow the method, family, optimizer and recipe (core/plan/learning_rates.py)."""
        from core.plan.learning_rates import schedule_defaults

        if not self.family:
            return  # nothing to follow before a model is chosen; the next call after Model syncs
        implied = schedule_defaults(self.family, self.method, str(self.settings["optimizer"])) | self.recipe_schedule
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
        from core.plan.fit import judge

        return judge(self.planned_family(), self.method, self.settings, self.gpus, shape=self.shape())

    def check_recipe(self) -> None:
        for key, value in self.settings.items():
            if key in SETTINGS:
                self.set_setting(key, value)
        resolved = resolve("settings", {k: v for k, v in self.settings.items() if k in SETTINGS})
        buckets = bucket_problem(resolved) or family_problem(self.chosen_family(), "auto", resolved, self.model or "")
        if buckets:
            raise UserError(buckets)
        fit = self.judge()
        if fit.fits is False:
            from core.memory.estimator import HEADROOM
            from core.plan.picker import suggest_when_nothing_fits

            need = fit.estimate.total_bytes / GIB
            have = self.gpus.smallest.vram_total_bytes / GIB
            tips = suggest_when_nothing_fits(self.planned_family(), self.method, self.gpus, [], self.settings, self.shape())
            from tui.format import tui_terms

            tip = tui_terms(tips[0]) if tips else "pick a recipe higher in the list"
            raise UserError(f"these settings need about {need:.1f} GiB but the GPU has {have:.1f} GiB (with {HEADROOM:.0%} headroom); {tip}")

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

    def set_validation(self, key: str, value: Any) -> None:
        """Change one [validation] value (UserError naming it and the rule)."""
        setting = SCHEMA["validation"][key]
        try:
            self.validation[key] = setting.check(value)
        except ValueError as exc:
            raise UserError(f"validation {key}: {exc}; {setting.help}") from None

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
        return make_plan(self.to_config(), self.dataset_scan, self.gpus, price_per_gpu_hour=self.price_per_gpu_hour, ram_bytes=self.ram_bytes())

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
        from core.sample_prompts import parse_prompt_line

        numbered = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.strip().startswith("#")]
        for n, line in numbered:
            try:
                parse_prompt_line(line)
            except UserError as exc:
                raise UserError(str(exc).replace(f"sample prompt '{line}'", f"prompt line {n} ('{line}')", 1)) from None
        self.prompts = [line for _, line in numbered]

    def check_samples(self) -> None:
        if int(self.schedule["sample_every_steps"]) > 0 and not self.prompts:
            raise UserError("samples are on but there is no prompt; add a prompt or set 'every N steps' to 0")

    # ---- step 7: review
    def default_name(self) -> str:
        """``<subject token>-<method>``, e.g. ``sks-dog-lora`` (the subset with the most items per epoch)."""
        from core.runs.listing import slug

        token = self.subject_token()
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

    def machine_gpus(self) -> Any:
        """The GPUs a launch from here runs on: ``gpus`` when they were probed, else this machine's
        (``sdtui --gpus 2x4090`` plans for two 4090s, but Launch starts what is really here)."""
        if not getattr(self.gpus, "simulated", False):
            return self.gpus
        if self.machine is None:
            from core.gpu import probe

            self.machine = probe()
        return self.machine

    def launch_note(self) -> str:
        """What the Review step says when the plan's GPUs are simulated ('' when they are this machine's)."""
        if not getattr(self.gpus, "simulated", False):
            return ""
        real = self.machine_gpus()
        planned = f"{self.gpus.count}× {self.gpus.smallest.name}" if self.gpus.smallest is not None else "simulated GPUs"
        here = f"{real.count}× {real.smallest.name}" if real.count and real.smallest is not None else f"the CPU ({real.reason or 'no GPU found'})"
        processes = max(1, real.count)
        return (
            f"Planned for {planned} (simulated with --gpus); Launch runs on what this machine has: {here}, "
            f"{processes} process{'es' if processes > 1 else ''} (run.toml's [distributed] num_processes = {processes})."
        )

    def to_config(self) -> Any:
        """The RunConfig these choices make (core.config)."""
        from core.config import new_config

        scan = self.dataset_scan
        subsets = [s | self.subset_options.get(_folder_key(s["path"]), {}) for s in scan.subset_configs()] if scan is not None else []
        self.sync_schedule()
        return new_config(
            name=self.name.strip() or "run",
            model_path=self._path_text(self.model) if not self.planning_only else "",
            family=self.chosen_family(),
            method=self.method,
            subsets=subsets,
            settings=dict(self.settings, recipe=self.recipe),
            schedule=dict(self.schedule, price_per_gpu_hour=self.price_per_gpu_hour or 0.0),
            prompts=list(self.prompts),
            sampler=self.sampler,
            logging=dict(self.logging),
            validation=dict(self.validation),
            distributed={"num_processes": max(1, self.machine_gpus().count)},
            method_options=dict(self.method_options),
            dataset_options={"caption_extension": self.caption_extension, "mask_dir": self.mask_dir},
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


def _folder_key(path: Any) -> str:
    """A subset folder as the key of its own options (resolved, so a config's and a scan's spelling agree)."""
    return str(Path(str(path)).expanduser().resolve())
