"""Stage and plan configuration: frozen dataclasses that round-trip to JSON and load from TOML or JSON.

A stage says *what* trains (a per-part ``trainable`` policy, or else its ``name`` passed to
``Trainable.stage_parameters``), on *which* data (shard globs with mixture weights), and *how* (batch,
steps, schedule with per-part learning rates, precision, intervals). A plan is an ordered list of
stages where each stage starts from the previous stage's final weights.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

Schedule = Literal["cosine", "linear", "constant"]
Precision = Literal["fp32", "bf16", "fp16"]
Strategy = Literal["auto", "none", "ddp", "fsdp"]

SCHEDULES: tuple[str, ...] = get_args(Schedule)
PRECISIONS: tuple[str, ...] = get_args(Precision)
STRATEGIES: tuple[str, ...] = get_args(Strategy)

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is wrong; ``key`` is its dotted path (``stages[0].data.sources[1].weight``).

    ``str(error)`` is one line: ``"<owner>.<key>: <problem>"`` for a config built in Python
    (``StageConfig.steps: must be >= 1, got 0``), ``"<key>: <problem>"`` once a loader has placed it
    in a file (``stages[0].steps: expected an integer, got 'ten' (str)``).
    """

    def __init__(self, key: str, problem: str, *, owner: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.owner = owner
        where = ".".join(p for p in (owner, key) if p)
        super().__init__(f"{where}: {problem}" if where else problem)

    def within(self, prefix: str) -> ConfigError:
        """The same error, its key placed under ``prefix`` (the owner is dropped: the path says where)."""
        key = f"{prefix}{'.' if self.key and not self.key.startswith('[') else ''}{self.key}"
        return ConfigError(key, self.problem)


def _check_keys(cls: type, data: Mapping[str, Any]) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError("", f"expected a table of {cls.__name__} keys, got {_show(data)}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = str(unknown[0])
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(key, f"unknown key{hint}; valid keys of {cls.__name__} are {names}")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(missing[0], f"required key is missing (a {cls.__name__} needs {required})")


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _type_problem(value: Any, tp: Any) -> str | None:
    """``None`` when ``value`` fits the annotation ``tp``, else what was expected."""
    origin = get_origin(tp)
    if tp is Any:
        return None
    if origin is Literal:
        choices = get_args(tp)
        return None if value in choices and isinstance(value, str) else f"one of {list(choices)}"
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        problems = [_type_problem(value, o) for o in options]
        if any(p is None for p in problems):
            return None
        return " or ".join(dict.fromkeys(p for p in problems if p))
    if tp is type(None):
        return None if value is None else "nothing (null)"
    if tp is bool:
        return None if isinstance(value, bool) else "true or false"
    if tp is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "a number"
    if tp is str:
        return None if isinstance(value, str) else "a string"
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, tuple | list):
            return "a list"
        if len(args) == 2 and args[1] is Ellipsis:
            bad = [_type_problem(v, args[0]) for v in value]
            first = next((b for b in bad if b), None)
            return None if first is None else f"a list of {first.removeprefix('a ').removeprefix('an ')}s"
        if len(value) != len(args):
            return f"a list of {len(args)} values"
        bad = [_type_problem(v, a) for v, a in zip(value, args)]
        first = next((b for b in bad if b), None)
        return None if first is None else f"a list of {len(args)} values, each {first}"
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        return None if isinstance(value, Mapping) else "a table"
    if isinstance(tp, type):
        return None if isinstance(value, tp) else f"a {tp.__name__} table"
    return None  # pragma: no cover - annotations this module does not use


def _check_types(obj: Any) -> None:
    """Raise ``ConfigError`` naming the first field whose value does not fit its annotation.

    Runs before the range checks, so ``steps = "ten"`` says "expected an integer", not a
    ``TypeError`` from ``"ten" < 1``. Whole numbers given for float fields become floats.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        problem = _type_problem(value, hints[f.name])
        if problem is not None:
            raise ConfigError(f.name, f"expected {problem}, got {_show(value)}", owner=type(obj).__name__)
        if hints[f.name] is float or hints[f.name] == (float | None):
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(obj, f.name, float(value))


def _fail(obj: Any, key: str, problem: str) -> typing.NoReturn:
    raise ConfigError(key, problem, owner=type(obj).__name__)


def _build(cls: type[T], data: Mapping[str, Any], convert: Any = None) -> T:
    """``cls(**data)`` with ``_check_keys`` first; nested errors keep their dotted path."""
    _check_keys(cls, data)
    d = dict(data)
    if convert is not None:
        convert(d)
    try:
        return cls(**d)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.problem) from None  # drop the class name: the caller adds the path


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The dotted paths at which two JSON-like configs differ, in the order the keys appear.

    Nested tables give ``data.shuffle_buffer``, list items ``data.sources[1].weight``; a key present
    on one side only is listed as itself; lists are compared item by item (an item added or removed
    is listed as ``path[i]``); tuples and lists compare equal, as do ``1`` and ``1.0``.

    >>> changed_keys({"lr": 1e-4, "data": {"sources": [{"weight": 1}]}},
    ...              {"lr": 2e-4, "data": {"sources": [{"weight": 0.5}]}})
    ['lr', 'data.sources[0].weight']
    """
    out: list[str] = []
    _diff(old, new, "", out)
    return out


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in [*a, *(k for k in b if k not in a)]:
            p = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                out.append(p)
            else:
                _diff(a[k], b[k], p, out)
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        for i in range(max(len(a), len(b))):
            if i >= len(a) or i >= len(b):
                out.append(f"{path}[{i}]")
            else:
                _diff(a[i], b[i], f"{path}[{i}]", out)
    elif a != b or isinstance(a, bool) != isinstance(b, bool):
        out.append(path)


@dataclass(frozen=True)
class DataSource:
    """One named source of webdataset shards.

    ``name``: unique within the stage; every sample carries it as ``__source__`` (a model's collate
    may read it, e.g. ``names/en``). ``shards`` are glob patterns (``data/en-*.tar``) or plain paths, expanded and sorted at read time.
    ``weight`` is the mixture weight relative to the other sources of the stage (e.g. 0.95 English,
    0.05 translated); weights need not sum to one.
    """

    name: str
    shards: tuple[str, ...]
    weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.shards, str):
            object.__setattr__(self, "shards", (self.shards,))
        elif isinstance(self.shards, list | tuple):
            object.__setattr__(self, "shards", tuple(self.shards))
        _check_types(self)
        if not self.name:
            _fail(self, "name", "must be a non-empty string")
        if not self.shards:
            _fail(self, "shards", f"is empty for source {self.name!r}; give at least one glob or path")
        if not (self.weight > 0) or self.weight == float("inf"):
            _fail(self, "weight", f"must be > 0 and finite, got {self.weight} (source {self.name!r})")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataSource:
        return _build(cls, data)


@dataclass(frozen=True)
class DataConfig:
    """The data of a stage: a weighted mixture of shard sources.

    ``shuffle_buffer``: size of the sample shuffle buffer of each source stream (shard order is also
    shuffled per epoch). ``num_streams``: number of independent data streams the global batch is made
    of; each rank reads ``num_streams / world_size`` of them, from disjoint shards. Fix it (e.g. to the
    largest world size you will use) and the global batch is the same whether the stage runs on 1 or
    N processes; ``None`` means "the world size". ``require_image``: a sample without an image is
    skipped (and counted) when true; text-only stages set it false.

    ``max_skip_fraction``: the skip budget of each source. Once a source has been read at least 32
    times (or through one epoch), reading stops with ``DataError`` naming the source when more than
    this fraction of its samples could not be delivered: a source that is all broken would otherwise
    silently get mixture weight 0. ``1.0`` turns the check off. ``background``: the RGB colour that
    transparent pixels are composited onto when images are decoded (the same rule as mpm-vision's
    and mpm-paint's image conversion; white by default).
    """

    sources: tuple[DataSource, ...]
    shuffle_buffer: int = 1000
    num_streams: int | None = None
    require_image: bool = True
    max_skip_fraction: float = 0.5
    background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        if isinstance(self.sources, list | tuple):
            srcs: list[DataSource] = []
            for i, s in enumerate(self.sources):
                try:
                    srcs.append(s if isinstance(s, DataSource) else DataSource.from_dict(s))
                except ConfigError as exc:
                    raise exc.within(f"DataConfig.sources[{i}]") from None
            object.__setattr__(self, "sources", tuple(srcs))
        if isinstance(self.background, list):
            object.__setattr__(self, "background", tuple(self.background))
        _check_types(self)
        if not self.sources:
            _fail(self, "sources", "is empty; give at least one DataSource")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            _fail(self, "sources", f"duplicate source names {names}")
        if self.shuffle_buffer < 0:
            _fail(self, "shuffle_buffer", f"must be >= 0, got {self.shuffle_buffer}")
        if self.num_streams is not None and self.num_streams < 1:
            _fail(self, "num_streams", f"must be >= 1 or None, got {self.num_streams}")
        if not (0.0 <= self.max_skip_fraction <= 1.0):
            _fail(self, "max_skip_fraction", f"must be in [0, 1], got {self.max_skip_fraction}")
        if not all(0 <= c <= 255 for c in self.background):
            _fail(self, "background", f"must be 3 integers in [0, 255], got {list(self.background)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataConfig:
        def convert(d: dict[str, Any]) -> None:
            sources = d.get("sources", ())
            if not isinstance(sources, list | tuple):
                raise ConfigError("sources", f"expected a list of source tables, got {_show(sources)}")
            converted = []
            for i, src in enumerate(sources):
                try:
                    converted.append(src if isinstance(src, DataSource) else DataSource.from_dict(src))
                except ConfigError as exc:
                    raise exc.within(f"sources[{i}]") from None
            d["sources"] = tuple(converted)

        return _build(cls, data, convert)


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters injected with peft (``pip install 'mpm-train[peft]'``).

    ``r``: the adapters' rank; ``alpha``: their scale (``alpha / r``); ``dropout``: on their input.
    ``target_modules``: module-name suffixes (``("q_proj", "v_proj")``) or one regex string matched
    against full module names (e.g. ``r".*language_model.*\\.(q_proj|v_proj)"``).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        _check_types(self)
        if self.r < 1:
            _fail(self, "r", f"must be >= 1, got {self.r}")
        if not (0.0 <= self.dropout < 1.0):
            _fail(self, "dropout", f"must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            _fail(self, "target_modules", "is empty")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraSpec:
        return _build(cls, data)


#: Stage keys that may change between a checkpoint and the run resuming it (with a warning): they
#: change when things are logged, saved or checked, not the arithmetic of the steps already taken.
#: ``steps`` may grow, or shrink down to the checkpoint's step. Any other change is refused.
RESUME_SAFE_KEYS: tuple[str, ...] = (
    "steps",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_last",
    "tensorboard",
    "divergence_factor",
    "divergence_steps",
    "gradient_checkpointing",
    "strategy",
    "init_from",
)


@dataclass(frozen=True)
class StageConfig:
    """Everything a stage needs; ``run_stage(model, config, ...)`` is the recipe that reads it.

    ``name``: the stage's name (its output directory in a plan; the preset asked of
    ``stage_parameters`` when there is no ``trainable`` table). ``data``: its :class:`DataConfig`.
    Batch arithmetic: ``batch_size`` is the micro-batch **per process**; the global batch of one
    optimizer step is ``batch_size * grad_accum * world_size``. ``steps`` counts optimizer steps.
    Learning rate: linear warmup over ``warmup_steps`` to ``lr``, then ``schedule`` decays it to
    ``lr * min_lr_ratio`` at ``steps``. Intervals ``log_every``, ``eval_every``, ``checkpoint_every``
    are in optimizer steps; 0 disables (a final checkpoint is always written). ``init_from``: a
    checkpoint directory (or its ``model.safetensors``) whose trainable weights are loaded before the
    stage starts. ``lora``: a :class:`LoraSpec`.

    What trains (see ``mpm_train.policy``): ``trainable`` maps the model's parts
    (``Trainable.parts()``, or its top-level submodules) to ``true`` (all of the part), ``false``
    (frozen), ``"lora"`` (peft LoRA adapters injected into the part, shaped by ``lora``; the default
    ``LoraSpec()`` when ``lora`` is unset) or any other string, a regular expression selecting the
    part's parameters by their name inside the part. Parts not named are frozen. An empty table
    means ``model.stage_parameters(name)`` decides (plus LoRA adapters wherever ``lora`` matches).
    ``part_lr`` gives a trained part its own learning rate (its own optimizer parameter groups,
    same schedule); the other parts use ``lr``.

    Other keys: ``weight_decay`` (AdamW, on matrices only), ``betas``, ``max_grad_norm`` (clipping;
    ``None`` = off), ``precision`` (``fp32``, ``bf16``, ``fp16``: autocast), ``gradient_checkpointing``,
    ``seed`` (RNG and data order), ``keep_last`` (checkpoints kept), ``strategy`` (``auto``, ``none``,
    ``ddp``, ``fsdp`` under torchrun), ``tensorboard`` (also write TensorBoard logs).

    Divergence guard: the stage stops with ``DivergenceError`` (like a NaN loss: before the update,
    the last good checkpoint kept) once the loss has stayed above ``divergence_factor`` times its
    running minimum for ``divergence_steps`` consecutive steps. ``divergence_factor = None`` turns
    it off; it only applies while the running minimum is positive.
    """

    name: str
    data: DataConfig
    steps: int
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_steps: int = 0
    schedule: Schedule = "cosine"
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0
    precision: Precision = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_last: int = 2
    strategy: Strategy = "auto"
    lora: LoraSpec | None = None
    init_from: str | None = None
    tensorboard: bool = False
    divergence_factor: float | None = 100.0
    divergence_steps: int = 20
    trainable: Mapping[str, bool | str] = field(default_factory=dict)
    part_lr: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.data, Mapping):
            try:
                object.__setattr__(self, "data", DataConfig.from_dict(self.data))
            except ConfigError as exc:
                raise exc.within("StageConfig.data") from None
        if isinstance(self.lora, Mapping):
            try:
                object.__setattr__(self, "lora", LoraSpec.from_dict(self.lora))
            except ConfigError as exc:
                raise exc.within("StageConfig.lora") from None
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        _check_types(self)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not self.name:
            _fail(self, "name", "must be a non-empty string")
        for key in ("steps", "batch_size", "grad_accum", "keep_last", "divergence_steps"):
            if getattr(self, key) < 1:
                _fail(self, key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "log_every", "eval_every", "checkpoint_every", "seed"):
            if getattr(self, key) < 0:
                _fail(self, key, f"must be >= 0, got {getattr(self, key)}")
        if self.schedule not in SCHEDULES:  # pragma: no cover - the type check names the choices
            _fail(self, "schedule", f"{self.schedule!r} is unknown; choose from {SCHEDULES}")
        if not (self.lr > 0) or self.lr == float("inf"):
            _fail(self, "lr", f"must be > 0 and finite, got {self.lr}")
        if not (0.0 <= self.min_lr_ratio <= 1.0):
            _fail(self, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if not (self.weight_decay >= 0):
            _fail(self, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            _fail(self, "betas", f"must be 2 numbers in [0, 1), got {list(self.betas)}")
        if self.max_grad_norm is not None and not (self.max_grad_norm > 0):
            _fail(self, "max_grad_norm", f"must be > 0 or None, got {self.max_grad_norm}")
        if self.divergence_factor is not None and not (self.divergence_factor > 1):
            _fail(self, "divergence_factor", f"must be > 1 or None (off), got {self.divergence_factor}")
        self._check_policy()

    def _check_policy(self) -> None:
        """Validate ``trainable`` / ``part_lr`` (and give a ``"lora"`` part the default ``LoraSpec``)."""
        policy = dict(self.trainable)
        for part, how in policy.items():
            if not isinstance(part, str) or not part:
                _fail(self, "trainable", f"part names must be non-empty strings, got {part!r}")
            if isinstance(how, bool) or how == "lora":
                continue
            if not isinstance(how, str) or not how:
                _fail(
                    self,
                    f"trainable.{part}",
                    f'must be true, false, "lora" or a regular expression, got {how!r}',
                )
            try:
                re.compile(how)
            except re.error as err:
                _fail(self, f"trainable.{part}", f"{how!r} is not a valid regular expression ({err})")
        rates = dict(self.part_lr)
        for part, lr in rates.items():
            if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < float("inf"):
                _fail(self, f"part_lr.{part}", f"must be a number > 0, got {lr!r}")
            if not policy:
                _fail(
                    self, f"part_lr.{part}", "per-part learning rates need a trainable table naming the parts"
                )
            if policy.get(part, False) is False:
                _fail(
                    self,
                    f"part_lr.{part}",
                    f"the part does not train in this stage (trainable.{part} is false)",
                )
        object.__setattr__(self, "trainable", policy)
        object.__setattr__(self, "part_lr", {k: float(v) for k, v in rates.items()})
        if self.lora is None and any(how == "lora" for how in policy.values()):
            object.__setattr__(self, "lora", LoraSpec())

    def __hash__(self) -> int:  # dict fields: hash the JSON form
        return hash(self.to_json())

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists); ``from_dict(to_dict())`` gives an equal config."""
        out: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageConfig:
        """Build from a mapping; a bad value raises ``ConfigError`` naming its dotted path."""

        def convert(d: dict[str, Any]) -> None:
            if isinstance(d["data"], Mapping):
                try:
                    d["data"] = DataConfig.from_dict(d["data"])
                except ConfigError as exc:
                    raise exc.within("data") from None
            if isinstance(d.get("lora"), Mapping):
                try:
                    d["lora"] = LoraSpec.from_dict(d["lora"])
                except ConfigError as exc:
                    raise exc.within("lora") from None

        return _build(cls, data, convert)

    @classmethod
    def from_json(cls, text: str) -> StageConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> StageConfig:
        """Load from a ``.toml`` or ``.json`` file (a ``[stage]`` table is accepted in TOML)."""
        data = load_mapping(path)
        inner = data.get("stage")
        return cls.from_dict(inner if isinstance(inner, Mapping) else data)

    def replace(self, **changes: Any) -> StageConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PlanConfig:
    """An ordered list of stages; stage ``i + 1`` starts from the weights stage ``i`` ended with."""

    stages: tuple[StageConfig, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.stages, list | tuple):
            raise ConfigError("stages", f"expected a list of stage tables, got {_show(self.stages)}")
        stages: list[StageConfig] = []
        for i, s in enumerate(self.stages):
            try:
                stages.append(s if isinstance(s, StageConfig) else StageConfig.from_dict(s))
            except ConfigError as exc:
                raise exc.within(f"stages[{i}]") from None
        object.__setattr__(self, "stages", tuple(stages))
        if not stages:
            raise ConfigError("stages", "is empty; give at least one [[stages]] table")
        seen: dict[str, int] = {}
        for i, s in enumerate(stages):
            if s.name in seen:
                raise ConfigError(
                    f"stages[{i}].name", f"{s.name!r} is already the name of stages[{seen[s.name]}]"
                )
            seen[s.name] = i

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [s.to_dict() for s in self.stages], "extra": dict(self.extra)}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanConfig:
        """Accepts ``{"stages": [...]}``; other top-level keys go to ``extra`` (e.g. the CLI's ``model``)."""
        if "stages" not in data:
            if "stage" in data:
                data = {**data, "stages": [data["stage"]]}
                data = {k: v for k, v in data.items() if k != "stage"}
            else:
                raise ConfigError("stages", "missing: give a list of [[stages]] tables")
        extra = {k: v for k, v in data.items() if k not in ("stages", "extra")}
        extra_table = data.get("extra", {})
        if not isinstance(extra_table, Mapping):
            raise ConfigError("extra", f"expected a table, got {_show(extra_table)}")
        extra.update(extra_table)
        return cls(stages=data["stages"], extra=extra)

    @classmethod
    def load(cls, path: str | Path) -> PlanConfig:
        """Load from TOML (``[[stages]]`` tables) or JSON."""
        return cls.from_dict(load_mapping(path))


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON file into a dict (chosen by suffix; clear error otherwise)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    if p.suffix == ".toml":
        try:
            with p.open("rb") as fh:
                return tomllib.load(fh)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{p}: not valid TOML: {exc}") from None
    if p.suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{p}: not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a JSON object at the top level, got {type(data).__name__}")
        return data
    raise ValueError(f"{p}: unknown config format {p.suffix!r}; use .toml or .json")


# ------------------------------------------------------------------------------------------------
# One hash per stage of a plan (changed_keys above names what differs)
# ------------------------------------------------------------------------------------------------
#: StageConfig keys that never change what a finished stage computed (logging, checkpoint bookkeeping,
#: guards that did not fire): left out of its fingerprint, so changing them never re-runs it.
BOOKKEEPING_KEYS: tuple[str, ...] = (
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_last",
    "tensorboard",
    "divergence_factor",
    "divergence_steps",
)


def stage_fingerprint(
    stage: StageConfig, *, upstream: str | None = None, context: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What a stage's result depends on: its config (bookkeeping keys left out), the hash of the stage it
    starts from (``upstream``) and the plan's ``context`` (e.g. the model factory and its settings)."""
    own = {k: v for k, v in stage.to_dict().items() if k not in BOOKKEEPING_KEYS}
    return {"stage": own, "upstream": upstream, "context": json.loads(json.dumps(dict(context or {})))}


def fingerprint_hash(fingerprint: Mapping[str, Any]) -> str:
    """SHA-256 of a fingerprint's canonical JSON (sorted keys): equal configs give equal hashes."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
