"""One typed configuration for every stage.

Defaults live in the models below; ``auditor/configs/default.yaml`` (shipped with the package) spells them out (a
test keeps the two equal). A run loads ``--config FILE`` (YAML, any subset of keys; or the name of a shipped file:
``default``, ``carlini2023``) over the defaults, then ``--set dotted.key=value`` overrides from the command line,
parsed as YAML scalars (``--set index.workers=4``, ``--set index.embedder.name=open_clip``).

Every mistake in a config is a :class:`~auditor.errors.ConfigError` with a one-line message naming the key, e.g.
``bad configuration: index.wrokers: unknown key (did you mean index.workers?)``.

Example:
    >>> from auditor.config import load_config
    >>> load_config("carlini2023", ["index.workers=4"]).probe.tiled_l2_threshold
    0.15
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .dedup.config import DedupConfig
from .errors import ConfigError
from .index.config import IndexConfig
from .probe.config import ProbeConfig
from .report.config import ReportConfig

#: the config files shipped inside the package (``--config NAME`` / ``--policy NAME``)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


#: top-level sections owned by commands built on top of the stages, which extend :class:`AuditorConfig` with them
#: (``lab``: ``auditor.lab.config.LabRunConfig``). A shared YAML file (``default.yaml``) may hold them; a config
#: model without the field drops them unread, and the command that owns the section validates it. Names only:
#: this module never imports those commands (the lab imports the stages, not the other way round).
EXTENSION_SECTIONS = ("lab",)


class AuditorConfig(BaseModel):
    """The stages' configuration: one typed section per stage, each passed down to its stage alone
    (``run_index(dataset, run_dir, cfg.index)``, ``run_dedup(run_dir, cfg.dedup, seed=cfg.seed)``, ...)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seed: int = 0
    index: IndexConfig = IndexConfig()
    dedup: DedupConfig = DedupConfig()
    probe: ProbeConfig = ProbeConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="before")
    @classmethod
    def _drop_extension_sections(cls, data: Any) -> Any:
        if isinstance(data, dict):
            drop = [k for k in EXTENSION_SECTIONS if k in data and k not in cls.model_fields]
            if drop:
                data = {k: v for k, v in data.items() if k not in drop}
        return data


def shipped_configs() -> list[str]:
    """Names of the YAML files shipped in ``auditor/configs`` (``default``, ``carlini2023``, ``policy``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_file(value: str | Path, what: str = "config file") -> Path:
    """An existing YAML file as an absolute path: ``value`` as a path (relative to the current folder), else the
    shipped file of that name (``carlini2023`` or ``carlini2023.yaml``). Raises :class:`ConfigError` otherwise.

    Example:
        >>> resolve_config_file("policy").name
        'policy.yaml'
    """
    p = Path(value).expanduser()
    if p.is_file():
        return p.absolute()
    if p.exists():
        raise ConfigError(f"{what} {value} is a folder, not a YAML file")
    name = str(value)
    if "/" not in name and "\\" not in name:
        stem = name[:-5] if name.endswith(".yaml") else name
        shipped = CONFIG_DIR / f"{stem}.yaml"
        if shipped.is_file():
            return shipped
    raise ConfigError(f"{what} {value} not found (neither a file nor a shipped name: "
                      f"{', '.join(shipped_configs())})")


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """The YAML mapping in ``path`` (``{}`` for an empty file); one-line :class:`ConfigError` for a missing file,
    invalid YAML or a file that is not a mapping."""
    p = resolve_config_file(path, what)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}:{where}: invalid YAML: {' '.join(str(problem).split())}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a UTF-8 text file ({exc.reason})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a {what} must be a YAML mapping of keys, got {type(data).__name__}")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``, nested mappings key by key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(items: Iterable[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects dotted.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set expects dotted.key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw  # not a YAML scalar (e.g. an unbalanced bracket): the text itself
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item}: {'.'.join(parts[:parts.index(p) + 1])} is set to a value "
                                  "by another --set")
            node = nxt
        node[parts[-1]] = value
    return out


def validation_message(exc: ValidationError, model: type[BaseModel] = AuditorConfig, prefix: str = "") -> str:
    """A pydantic error reduced to ``key: problem`` items on one line; unknown keys get a close-match hint.

    Example:
        >>> try:
        ...     AuditorConfig.model_validate({"index": {"wrokers": 4}})
        ... except ValidationError as e:
        ...     validation_message(e)
        'index.wrokers: unknown key (did you mean index.workers?)'
    """
    items = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        key = ".".join(([prefix] if prefix else []) + loc) or "(top level)"
        if err.get("type") == "extra_forbidden":
            hint = _close_key(model, loc)
            items.append(f"{key}: unknown key" + (f" (did you mean {hint}?)" if hint else ""))
        else:
            msg = err.get("msg", "invalid")
            given = err.get("input")
            if err.get("type") != "missing" and not isinstance(given, (dict, list)):
                msg += f" (got {given!r})"
            items.append(f"{key}: {msg}")
    return "; ".join(" ".join(i.split()) for i in items)


def _close_key(model: type[BaseModel], loc: list[str]) -> Optional[str]:
    """The closest valid key to ``loc`` (an unknown key), as a dotted path, or None."""
    node: Any = model
    for part in loc[:-1]:
        fields = getattr(node, "model_fields", None)
        if not fields or part not in fields:
            return None
        node = fields[part].annotation
        node = next((a for a in getattr(node, "__args__", ()) if hasattr(a, "model_fields")), node)
    fields = getattr(node, "model_fields", None)
    if not fields:
        return None
    match = difflib.get_close_matches(loc[-1], list(fields), n=1, cutoff=0.6)
    return ".".join(loc[:-1] + match) if match else None


def validate_config(data: dict, model: type[BaseModel] = AuditorConfig, prefix: str = ""):
    """``model.model_validate(data)``, with a one-line :class:`ConfigError` for whatever does not validate."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, model, prefix)) from None


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                base: Optional[dict] = None, top: Optional[dict] = None,
                model: type[BaseModel] = AuditorConfig) -> AuditorConfig:
    """The config of a run: ``base`` (e.g. a command's own defaults), then the YAML file ``path`` (a path or a
    shipped name), then the ``--set`` overrides, then ``top`` (a command's explicit flags), validated by
    ``model`` (:class:`AuditorConfig`, or a command's extension of it such as the lab's ``LabRunConfig``).
    Raises :class:`ConfigError` for any mistake."""
    data: dict[str, Any] = copy.deepcopy(base or {})
    if path is not None:
        data = deep_merge(data, read_yaml_mapping(path))
    data = deep_merge(data, parse_overrides(overrides))
    data = deep_merge(data, top or {})
    return validate_config(data, model)


def config_to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
