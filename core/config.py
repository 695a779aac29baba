"""run.toml: the run config as a tomlkit document (comments and key order survive a round trip).

Every section and key name comes from :mod:`core.settings`. Loading validates types and
values and names the line of any mistake; ``--set`` overrides go through the same rules.
Relative subset paths (and a relative model path that exists) are made absolute against the
folder of the file they were read from, so a config copied into a run folder still works.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import ParseError

from core.atomic import read_user_text, write_atomic
from core.errors import UserError
from core.families import spec
from core.sample_prompts import parse_prompt_line
from core.settings import SCHEMA, SETTINGS, SUBSET_KEYS, SUBSET_OPTIONS, Setting, bucket_problem, family_problem, lookup, optimizer_learning_rate, resolve, setting_name, technique_problem

_SECTION_COMMENTS = {
    "model": "the base model",
    "dataset": "image folders: <repeats>_<token> subsets; is_reg marks regularisation/class images",
    "method": "what is trained",
    "settings": "the recipe's trainer settings after overrides",
    "schedule": "epoch mode (epochs) or step mode (max_steps > 0); steps are optimizer steps",
    "samples": "prompts in kohya syntax: prompt --n negative --w 512 --h 512 --d seed --l cfg --s steps",
    "distributed": "accelerate launch setup",
    "validation": "validation loss on held-out images (split) or a folder of its own, at fixed timesteps and noise",
    "logging": "TensorBoard event files in <run>/tb/; W&B when wandb_project is set",
}
#: The first line of a run.toml; save_config completes it with the file's own path.
_FIRST_LINE = "sdtui run config; start it with: sdtui train "
_SECTION_ORDER = ("model", "dataset", "method", "settings", "schedule", "samples", "validation", "distributed", "logging")
_CAPTION_EXTENSIONS = (".txt", ".caption")


class RunConfig:
    """A run.toml document with typed accessors; ``path`` is where it was loaded from or saved to."""

    def __init__(self, document: tomlkit.TOMLDocument, path: str | os.PathLike[str] | None = None) -> None:
        self.document = document
        self.path = Path(path) if path is not None else None

    def _table(self, section: str) -> Mapping[str, Any]:
        table = self.document.get(section)
        return table if isinstance(table, Mapping) else {}

    def section(self, section: str) -> dict[str, Any]:
        """A section's values with the defaults of missing keys filled in (plain Python values).

        A [schedule] without a learning rate, scheduler or warm-up takes the method's default
        (core/plan/learning_rates.py) rather than one figure for every method.
        """
        given = {key: _plain(value) for key, value in self._table(section).items() if key in SCHEMA[section]}
        implied = self._implied_schedule() if section == "schedule" else None
        return resolve(section, implied, given)

    def _implied_schedule(self) -> dict[str, Any]:
        return _method_schedule(self.family, self.method, self.settings)

    @property
    def name(self) -> str:
        """The run name."""
        return str(_plain(self.document.get("name", SCHEMA[""]["name"].default)))

    @property
    def model_path(self) -> str:
        """[model] path."""
        return self.section("model")["path"]

    @property
    def family(self) -> str:
        """[model] family (one of ``core.families.FAMILIES``): as run.toml states it, else detected
        from [model] path (UserError when the path cannot tell), never assumed."""
        if "family" not in self._table("model") and self.model_path:
            from core.families.detect import detect_family

            return detect_family(self.model_path)
        return self.section("model")["family"]

    @property
    def method(self) -> str:
        """[method] kind: lora, dreambooth, finetune or textual_inversion."""
        return self.section("method")["kind"]

    @property
    def settings(self) -> dict[str, Any]:
        """[settings] with defaults filled in."""
        return self.section("settings")

    @property
    def schedule(self) -> dict[str, Any]:
        """[schedule] with defaults filled in."""
        return self.section("schedule")

    @property
    def distributed(self) -> dict[str, Any]:
        """[distributed] with defaults filled in."""
        return self.section("distributed")

    @property
    def prompts(self) -> list[str]:
        """[samples] prompts (kohya prompt-line syntax)."""
        return list(self.section("samples")["prompts"])

    @property
    def subsets(self) -> list[dict[str, Any]]:
        """[[dataset.subsets]] as dicts with path, repeats, token and is_reg, and the subset's own
        options (``core.settings.SUBSET_OPTIONS``) where it sets them."""
        tables = self._table("dataset").get("subsets") or []
        result = []
        for table in tables:
            subset = resolve("subset", {k: _plain(v) for k, v in table.items() if k in SUBSET_KEYS})
            subset |= {k: SUBSET_OPTIONS[k].check(_plain(v)) for k, v in table.items() if k in SUBSET_OPTIONS}
            result.append(subset)
        return result

    @property
    def caption_extensions(self) -> tuple[str, ...]:
        """Caption extensions to try, [dataset] caption_extension first (for the scanner)."""
        return self.caption_extensions_of({})

    def caption_extensions_of(self, subset: Mapping[str, Any]) -> tuple[str, ...]:
        """Caption extensions to try for one subset: its own caption_extension, else [dataset]'s, first."""
        first = str(subset.get("caption_extension") or self.section("dataset")["caption_extension"])
        return (first, *(e for e in _CAPTION_EXTENSIONS if e != first))

    def get(self, dotted: str) -> Any:
        """The value of ``section.key`` (a bare key means settings.key), default if unset."""
        section, setting = _lookup(dotted)
        return self.name if section == "" else self.section(section)[setting.key]

    def set(self, dotted: str, value: Any) -> None:
        """Set ``section.key`` after checking the value (UserError with the rule); comments stay."""
        section, setting = _lookup(dotted)
        try:
            checked = setting.check(value)
        except ValueError as exc:
            raise UserError(f"{setting_name(section, setting.key)} = {value!r} is not allowed: {exc}") from None
        self._put(section, setting, checked)

    def _put(self, section: str, setting: Setting, value: Any) -> None:
        target = self.document if section == "" else _ensure_table(self.document, section)
        if setting.key in target:
            target[setting.key] = _toml_value(value)
        else:
            target.add(setting.key, _toml_value(value).comment(setting.help))

    def set_subsets(self, subsets: Iterable[Mapping[str, Any] | Any]) -> None:
        """Replace [[dataset.subsets]] (dicts, or scan Subsets with ``to_config()``)."""
        aot = tomlkit.aot()
        for subset in subsets:
            aot.append(_subset_table(subset))
        _ensure_table(self.document, "dataset")["subsets"] = aot

    def set_prompts(self, prompts: Sequence[str]) -> None:
        """Replace [samples] prompts (each checked as a kohya prompt line)."""
        for prompt in prompts:
            parse_prompt_line(prompt)
        self._put("samples", SCHEMA["samples"]["prompts"], list(prompts))

    def check_complete(self) -> None:
        """Raise UserError when the model path or the subsets are missing (what training needs)."""
        where = str(self.path) if self.path else "the run config"
        if not self.model_path:
            raise UserError(f'{where} has no [model] path; add path = "/path/to/model" under [model]')
        if not self.subsets:
            raise UserError(f'{where} has no [[dataset.subsets]]; add one with path = "/data/10_sks dog" and repeats = 10')

    def check_family(self) -> None:
        """Raise UserError when a value does not suit the family the run states (``core.settings.family_problem``)
        or the family does not train the run's method (``FamilySpec.check_method``)."""
        stated = self._table("model").get("family")
        problem = family_problem(str(stated), self.section("model")["prediction_type"], self.settings, self.model_path) if stated else None
        if problem:
            raise UserError(f"{self.path}: {problem}" if self.path else problem)
        if stated and str(self.method) not in spec(str(stated)).methods:
            problem = f"the {stated} family does not train with {self.method}; set [method] kind to one of {', '.join(spec(str(stated)).methods)}"
            raise UserError(f"{self.path}: {problem}" if self.path else problem)

    def check_techniques(self) -> None:
        """Raise UserError when a memory technique cannot work with the method or the other settings (``core.settings.technique_problem``)."""
        distributed = self.section("distributed")
        processes = int(distributed["num_processes"]) * int(distributed["num_machines"])
        problem = technique_problem(str(self.section("method")["kind"]), self.settings, str(distributed["backend"]), processes)
        if problem:
            raise UserError(f"{self.path}: {problem}" if self.path else problem)

    def check_buckets(self) -> None:
        """Raise UserError when the bucket sides do not frame the resolution (``core.settings.bucket_problem``)."""
        problem = bucket_problem(self.settings)
        if problem:
            raise UserError(f"{self.path}: {problem}" if self.path else problem)

    def check_folders(self) -> None:
        """Raise UserError when [validation] folder or [dataset] mask_dir names a folder that is not there."""
        where = f"{self.path}: " if self.path else ""
        for section, key, what in (("validation", "folder", "validation images"), ("dataset", "mask_dir", "loss masks")):
            raw = str(self.section(section)[key]).strip()
            if raw and not Path(raw).expanduser().is_dir():
                raise UserError(f'{where}{section}.{key} = {raw!r} is not a folder; point it at the folder of {what} or set it to ""')

    def to_dict(self) -> dict[str, Any]:
        """The document as plain Python values."""
        return self.document.unwrap()

    def to_toml(self) -> str:
        """The document as TOML text, comments included."""
        return self.document.as_string()


def load_config(path: str | os.PathLike[str], complete: bool = True) -> RunConfig:
    """Read and validate a run.toml; every mistake is a UserError naming the file, line and rule.

    ``complete=False`` also accepts a config without model path or subsets (the wizard fills them in).
    """
    file = Path(path).expanduser()
    try:
        text = read_user_text(file)
    except FileNotFoundError:
        raise UserError(f"run config {file} does not exist; check the path or create one with the wizard (sdtui)") from None
    except IsADirectoryError:
        raise UserError(f"run config {file} is a folder; pass the run.toml file inside it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"run config {file} cannot be read ({exc}); make it a readable UTF-8 text file") from None
    try:
        document = tomlkit.parse(text)
    except ParseError as exc:
        reason = re.sub(r" at line \d+ col \d+$", "", str(exc))
        raise UserError(f"{file} line {exc.line}, column {exc.col}: invalid TOML ({reason}); fix the syntax there") from None
    _Validator(file, text).validate(document)
    config = RunConfig(document, file)
    config.check_buckets()
    config.check_family()
    config.check_techniques()
    if complete:
        config.check_complete()
    _absolute_paths(config, file.resolve().parent)
    if complete:
        config.check_folders()
    return config


def new_config(
    name: str,
    model_path: str | os.PathLike[str],
    family: str,
    method: str,
    subsets: Iterable[Mapping[str, Any] | Any],
    settings: Mapping[str, Any],
    schedule: Mapping[str, Any] | None = None,
    prompts: Sequence[str] | None = None,
    distributed: Mapping[str, Any] | None = None,
    logging: Mapping[str, Any] | None = None,
    sampler: str | None = None,
    method_options: Mapping[str, Any] | None = None,
    dataset_options: Mapping[str, Any] | None = None,
    validation: Mapping[str, Any] | None = None,
) -> RunConfig:
    """A complete run config: every key of SCHEMA with its default unless given, with comments.

    The learning rate, text-encoder rate, scheduler and warm-up not given are the method's for
    the optimizer (core/plan/learning_rates.py; Prodigy's rule of 1.0 included).
    ``method_options`` are the [method] keys besides ``kind`` (placeholder_token,
    class_prompt); ``dataset_options`` the [dataset] keys besides the subsets
    (caption_extension).
    """
    given = {
        "": {"name": name},
        "dataset": dict(dataset_options or {}),
        "model": {"path": str(model_path) if str(model_path) else "", "family": family},
        "method": {**dict(method_options or {}), "kind": method},
        "settings": dict(settings),
        "schedule": dict(schedule or {}),
        "samples": {"prompts": list(prompts or []), **({"sampler": sampler} if sampler else {})},
        "distributed": dict(distributed or {}),
        "logging": dict(logging or {}),
        "validation": dict(validation or {}),
    }
    document = tomlkit.document()
    document.add(tomlkit.comment(_FIRST_LINE + "run.toml"))
    for section in ("", *_SECTION_ORDER):
        values = given.get(section, {})
        unknown = [k for k in values if k not in SCHEMA[section]]
        if unknown:
            raise UserError(f"unknown setting {setting_name(section, unknown[0])}{_suggest(unknown[0], SCHEMA[section])}; known: {', '.join(SCHEMA[section])}")
        if section == "schedule":
            values = _method_schedule(family, method, given["settings"]) | values
        target: Any = document if section == "" else tomlkit.table()
        if section:
            target.add(tomlkit.comment(_SECTION_COMMENTS[section]))
        for key, setting in SCHEMA[section].items():
            value = values.get(key, setting.default)
            try:
                checked = setting.check(value)
            except ValueError as exc:
                raise UserError(f"{setting_name(section, key)} = {value!r} is not allowed: {exc}") from None
            target.add(key, _toml_value(checked).comment(setting.help))
        if section == "dataset":
            aot = tomlkit.aot()
            for subset in subsets:
                aot.append(_subset_table(subset))
            target.add("subsets", aot)
        if section:
            document.add(section, target)
    config = RunConfig(document)
    for prompt in given["samples"]["prompts"]:
        parse_prompt_line(prompt)
    return config


def apply_overrides(config: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """Apply ``section.key=value`` overrides (a bare key means settings.key) in place; returns ``config``.

    Choosing an optimizer with its own learning-rate rule (Prodigy: 1.0) sets the learning
    rate too unless the same overrides give one.
    """
    changed: set[str] = set()
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"override '{item}' is not key=value; write it as section.key=value, e.g. schedule.max_steps=400 or batch_size=2")
        section, setting = _lookup(key, " in --set")
        value = _parse_override(raw.strip(), setting)
        try:
            checked = setting.check(value)
        except ValueError as exc:
            raise UserError(f"--set {item}: {exc}") from None
        config._put(section, setting, checked)
        changed.add(setting_name(section, setting.key))
    _follow_optimizer_rule(config, changed)
    config.check_buckets()
    config.check_family()
    config.check_techniques()
    return config


def _follow_optimizer_rule(config: RunConfig, changed: set[str]) -> None:
    """Set the learning rate an optimizer needs when the optimizer changed and the rate did not."""
    rule = optimizer_learning_rate(config.settings["optimizer"])
    if rule is not None and "settings.optimizer" in changed and "schedule.learning_rate" not in changed:
        config.set("schedule.learning_rate", rule)


def apply_recipe(config: RunConfig, settings: Mapping[str, Any], recipe_name: str | None = None, schedule: Mapping[str, Any] | None = None) -> RunConfig:
    """Merge a recipe's settings into [settings] (and set ``recipe``) in place; returns ``config``.

    A learning rate, text-encoder rate, scheduler or warm-up still at the method's default
    follows the recipe: its own ``schedule`` value, else the default for its optimizer (which
    holds an optimizer's own rule, Prodigy's 1.0). A value the user changed stays.
    """
    before = _method_schedule(config.family, config.method, config.settings)
    values = dict(settings)
    if recipe_name is not None:
        values["recipe"] = recipe_name
    for key, value in values.items():
        if key not in SETTINGS:
            who = f"recipe {recipe_name}" if recipe_name else "the recipe"
            raise UserError(f"{who} sets unknown setting '{key}'{_suggest(key, SETTINGS)}; use one of the [settings] keys")
        config.set(f"settings.{key}", value)
    current = config.schedule
    for key, value in (_method_schedule(config.family, config.method, config.settings) | dict(schedule or {})).items():
        if current[key] == before[key]:
            config.set(f"schedule.{key}", value)
    return config


def _method_schedule(family: str, method: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The learning-rate keys a run of ``method`` on ``family`` with these settings starts from."""
    from core.plan.learning_rates import schedule_defaults

    return schedule_defaults(family, method, resolve("settings", settings)["optimizer"])


def config_text(config: RunConfig, path: str | os.PathLike[str]) -> str:
    """The TOML text ``save_config`` writes to ``path``: its header names that file."""
    text = config.to_toml()
    first, newline, rest = text.partition("\n")
    if first.startswith("# " + _FIRST_LINE):
        return f"# {_FIRST_LINE}{path}{newline}{rest}"
    return text


def save_config(config: RunConfig, path: str | os.PathLike[str]) -> Path:
    """Write the config atomically to ``path`` and remember it as the config's path."""
    target = Path(path)
    write_atomic(target, config_text(config, target))
    config.path = target
    return target


def _plain(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


def _suggest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _all_names() -> list[str]:
    return sorted(setting_name(s, k) for s, keys in SCHEMA.items() for k in keys)


def _lookup(dotted: str, where: str = "") -> tuple[str, Setting]:
    try:
        return lookup(dotted)
    except KeyError:
        names = _all_names() + list(SETTINGS)
        close = difflib.get_close_matches(dotted, names, n=1, cutoff=0.6) or difflib.get_close_matches(dotted.rpartition(".")[2], names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        sections = ", ".join(s for s in SCHEMA if s)
        raise UserError(
            f"unknown setting '{dotted}'{where}; {hint}spell it section.key=value with a section among {sections} "
            f"(a bare key means settings.key), e.g. schedule.max_steps=400 or batch_size=2"
        ) from None


def _parse_override(raw: str, setting: Setting) -> Any:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    if setting.type is list and raw.startswith("["):
        try:
            return tomlkit.parse(f"v = {raw}")["v"].unwrap()
        except ParseError:
            raise UserError(f'--set {setting.key}={raw}: the list is not valid TOML; write it like ["a", "b"]') from None
    return raw


def _toml_value(value: Any) -> Any:
    if isinstance(value, list):
        array = tomlkit.array()
        array.extend(value)
        if value:
            array.multiline(True)
        return array
    return tomlkit.item(value)


def _ensure_table(document: tomlkit.TOMLDocument, section: str) -> Any:
    if section not in document:
        table = tomlkit.table()
        if section in _SECTION_COMMENTS:
            table.add(tomlkit.comment(_SECTION_COMMENTS[section]))
        document.add(section, table)
    return document[section]


def _subset_table(subset: Mapping[str, Any] | Any) -> Any:
    values = dict(subset.to_config() if hasattr(subset, "to_config") else subset)
    unknown = [k for k in values if k not in SUBSET_KEYS and k not in SUBSET_OPTIONS]
    if unknown:
        known = [*SUBSET_KEYS, *SUBSET_OPTIONS]
        raise UserError(f"unknown subset key '{unknown[0]}'{_suggest(unknown[0], known)}; a subset has {', '.join(known)}")
    if not values.get("path"):
        raise UserError("a dataset subset has no path; give each subset the folder of its images")
    values["path"] = os.path.abspath(os.path.expanduser(str(values["path"])))
    table = tomlkit.table()
    for key, setting in SUBSET_KEYS.items():
        value = values.get(key, setting.default)
        try:
            table.add(key, setting.check(value))
        except ValueError as exc:
            raise UserError(f"subset {values['path']}: {exc}") from None
    for key, setting in SUBSET_OPTIONS.items():
        if key in values:
            try:
                table.add(key, setting.check(values[key]))
            except ValueError as exc:
                raise UserError(f"subset {values['path']}: {exc}") from None
    return table


def _absolute_paths(config: RunConfig, base: Path) -> None:
    for table in config._table("dataset").get("subsets") or []:
        path = Path(os.path.expanduser(str(table["path"])))
        if not path.is_absolute():
            table["path"] = str((base / path).resolve())
    for section, key in (("validation", "folder"), ("dataset", "mask_dir")):
        table = config._table(section)
        raw = str(table.get(key, ""))
        if raw and not Path(raw).expanduser().is_absolute():
            table[key] = str((base / raw).resolve())  # type: ignore[index]
    settings = config._table("settings")
    output_dir = str(settings.get("output_dir", ""))
    if output_dir and not Path(output_dir).expanduser().is_absolute():
        settings["output_dir"] = str((base / output_dir).resolve())
    model = config._table("model")
    raw = str(model.get("path", ""))
    if raw and not Path(raw).expanduser().is_absolute() and (base / raw).exists():
        model["path"] = str((base / raw).resolve())


_TYPE_RULES = {bool: "true or false", int: "a whole number", float: "a number", str: "a quoted string", list: "a list of quoted strings"}


def _type_ok(setting: Setting, value: Any) -> bool:
    if setting.type is bool:
        return isinstance(value, bool)
    if setting.type is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if setting.type is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if setting.type is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str)


class _Validator:
    """Checks a parsed run.toml against SCHEMA, naming the line of each mistake."""

    def __init__(self, file: Path, text: str) -> None:
        self.file = file
        self.lines = _line_index(text)

    def fail(self, where: tuple[Any, ...], message: str) -> UserError:
        line = self.lines.get(where) or self.lines.get(where[:1])
        at = f"{self.file} line {line}" if line else str(self.file)
        return UserError(f"{at}: {message}")

    def validate(self, document: tomlkit.TOMLDocument) -> None:
        sections = [s for s in SCHEMA if s]
        for key, value in document.items():
            if key in SCHEMA[""]:
                self.value("", key, value, ("", key))
            elif key in SCHEMA:
                if not isinstance(value, Mapping):
                    raise self.fail(("", key), f"{key} must be a [{key}] section, not a value; write it as a table")
                self.section(key, value)
            else:
                raise self.fail(
                    ("", key) if ("", key) in self.lines else (key,),
                    f"unknown section or key '{key}'{_suggest(key, [*SCHEMA, 'name'])}; known: name and the sections {', '.join(sections)}",
                )

    def section(self, section: str, table: Mapping[str, Any]) -> None:
        for key, value in table.items():
            if section == "dataset" and key == "subsets":
                self.subsets(value)
            elif key in SCHEMA[section]:
                self.value(section, key, value, (section, key))
                if section == "samples" and key == "prompts":
                    self.prompts(_plain(value))
            else:
                known = list(SCHEMA[section]) + (["subsets"] if section == "dataset" else [])
                raise self.fail((section, key), f"unknown key '{key}' in [{section}]{_suggest(key, known)}; known keys: {', '.join(known)}")

    def value(self, section: str, key: str, value: Any, where: tuple[Any, ...]) -> None:
        setting = SCHEMA[section][key] if section != "subset" else {**SUBSET_KEYS, **SUBSET_OPTIONS}[key]
        plain = _plain(value)
        name = f"[[dataset.subsets]] {key}" if section == "subset" else setting_name(section, key)
        if not _type_ok(setting, plain):
            raise self.fail(where, f"{name} must be {_TYPE_RULES[setting.type]}, not {plain!r}; fix the value")
        try:
            setting.check(plain)
        except ValueError as exc:
            raise self.fail(where, f"{name} = {plain!r} is not allowed: {exc}") from None

    def subsets(self, value: Any) -> None:
        if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
            raise self.fail(("dataset", "subsets"), "dataset.subsets must be [[dataset.subsets]] tables; write each subset as its own [[dataset.subsets]] block")
        for index, table in enumerate(value):
            for key, item in table.items():
                if key not in SUBSET_KEYS and key not in SUBSET_OPTIONS:
                    known = [*SUBSET_KEYS, *SUBSET_OPTIONS]
                    raise self.fail(("dataset.subsets", index, key), f"unknown key '{key}' in [[dataset.subsets]]{_suggest(key, known)}; known keys: {', '.join(known)}")
                self.value("subset", key, item, ("dataset.subsets", index, key))
            if not _plain(table.get("path", "")):
                raise self.fail(("dataset.subsets", index), 'this [[dataset.subsets]] has no path; add path = "/data/10_sks dog"')

    def prompts(self, prompts: list[str]) -> None:
        for prompt in prompts:
            try:
                parse_prompt_line(prompt)
            except UserError as exc:
                raise self.fail(("samples", "prompts"), f"{exc}") from None


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")


def _line_index(text: str) -> dict[tuple[Any, ...], int]:
    """1-based line numbers of section headers and keys: (section,), (section, key), ("dataset.subsets", i, key)."""
    index: dict[tuple[Any, ...], int] = {}
    section = ""
    array_counts: dict[str, int] = {}
    in_multiline = False
    for number, line in enumerate(text.splitlines(), start=1):
        opens = bool(line.count('"""') % 2 or line.count("'''") % 2)
        if in_multiline:
            in_multiline = not opens
            continue
        in_multiline = opens
        header = _HEADER.match(line)
        if header and not _KEY.match(line):
            section = ".".join(p.strip().strip("\"'") for p in header.group(2).split("."))
            if header.group(1) == "[[":
                position = array_counts.get(section, 0)
                array_counts[section] = position + 1
                index.setdefault((section, position), number)
            index.setdefault((section,), number)
            index.setdefault(tuple(section.rpartition(".")[::2]) if "." in section else ("", section), number)
            continue
        key = _KEY.match(line)
        if key:
            parts = [p.strip().strip("\"'") for p in key.group(1).split(".")]
            full = [*(section.split(".") if section else []), *parts]
            if full[:2] == ["dataset", "subsets"] and len(full) == 3 and array_counts.get("dataset.subsets"):
                index.setdefault(("dataset.subsets", array_counts["dataset.subsets"] - 1, full[2]), number)
            else:
                index.setdefault((".".join(full[:-1]), full[-1]), number)
                if len(full) > 2:
                    index.setdefault((full[0], full[1]), number)
    return index


def section_of(config: Any, name: str) -> dict[str, Any]:
    """A run.toml section with defaults filled in, from a RunConfig or a run.toml dict."""
    if hasattr(config, "section"):
        return dict(config.section(name))
    given = config.get(name, {}) if isinstance(config, Mapping) else {}
    return resolve(name, {k: v for k, v in given.items() if k in SCHEMA[name]})
