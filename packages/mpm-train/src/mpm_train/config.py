"""Stage and plan configuration: frozen dataclasses that round-trip to JSON and load from TOML or JSON.

A stage says *what* trains (``name``, passed to ``Trainable.stage_parameters``), on *which* data (shard
globs with mixture weights), and *how* (batch, steps, schedule, precision, intervals). A plan is an
ordered list of stages where each stage starts from the previous stage's result.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

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


def _check_keys(cls: type, data: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(names)}")


@dataclass(frozen=True)
class DataSource:
    """One named source of webdataset shards.

    ``shards`` are glob patterns (``data/en-*.tar``) or plain paths, expanded and sorted at read time.
    ``weight`` is the mixture weight relative to the other sources of the stage (e.g. 0.95 English,
    0.05 translated); weights need not sum to one.
    """

    name: str
    shards: tuple[str, ...]
    weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.shards, str):
            object.__setattr__(self, "shards", (self.shards,))
        else:
            object.__setattr__(self, "shards", tuple(self.shards))
        if not self.name:
            raise ValueError("DataSource.name must be a non-empty string")
        if not self.shards:
            raise ValueError(f"DataSource {self.name!r}: shards is empty; give at least one glob or path")
        if not (self.weight > 0):
            raise ValueError(f"DataSource {self.name!r}: weight must be > 0, got {self.weight}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataSource:
        _check_keys(cls, data)
        return cls(**data)


@dataclass(frozen=True)
class DataConfig:
    """The data of a stage: a weighted mixture of shard sources.

    ``shuffle_buffer``: size of the sample shuffle buffer of each source stream (shard order is also
    shuffled per epoch). ``num_streams``: number of independent data streams the global batch is made
    of; each rank reads ``num_streams / world_size`` of them, from disjoint shards. Fix it (e.g. to the
    largest world size you will use) and the global batch is the same whether the stage runs on 1 or
    N processes; ``None`` means "the world size". ``require_image``: a sample without an image is
    skipped (and counted) when true; text-only stages set it false.
    """

    sources: tuple[DataSource, ...]
    shuffle_buffer: int = 1000
    num_streams: int | None = None
    require_image: bool = True

    def __post_init__(self) -> None:
        srcs = tuple(s if isinstance(s, DataSource) else DataSource.from_dict(s) for s in self.sources)
        object.__setattr__(self, "sources", srcs)
        if not srcs:
            raise ValueError("DataConfig.sources is empty; give at least one DataSource")
        names = [s.name for s in srcs]
        if len(set(names)) != len(names):
            raise ValueError(f"DataConfig: duplicate source names {names}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"DataConfig.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.num_streams is not None and self.num_streams < 1:
            raise ValueError(f"DataConfig.num_streams must be >= 1 or None, got {self.num_streams}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataConfig:
        _check_keys(cls, data)
        d = dict(data)
        d["sources"] = tuple(DataSource.from_dict(s) for s in d.get("sources", ()))
        return cls(**d)


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters injected with peft (``pip install 'mpm-train[peft]'``).

    ``target_modules``: module-name suffixes (``("q_proj", "v_proj")``) or one regex string matched
    against full module names (e.g. ``r".*language_model.*\\.(q_proj|v_proj)"``).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        if not isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.r < 1:
            raise ValueError(f"LoraSpec.r must be >= 1, got {self.r}")
        if not self.target_modules:
            raise ValueError("LoraSpec.target_modules is empty")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraSpec:
        _check_keys(cls, data)
        return cls(**data)


@dataclass(frozen=True)
class StageConfig:
    """Everything a stage needs; ``run_stage(model, config, ...)`` is the recipe that reads it.

    Batch arithmetic: ``batch_size`` is the micro-batch **per process**; the global batch of one
    optimizer step is ``batch_size * grad_accum * world_size``. ``steps`` counts optimizer steps.
    Learning rate: linear warmup over ``warmup_steps`` to ``lr``, then ``schedule`` decays it to
    ``lr * min_lr_ratio`` at ``steps``. Intervals are in optimizer steps; 0 disables (a final
    checkpoint is always written). ``init_from``: a checkpoint directory (or its ``model.safetensors``)
    whose trainable weights are loaded before the stage starts.
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

    def __post_init__(self) -> None:
        if isinstance(self.data, Mapping):
            object.__setattr__(self, "data", DataConfig.from_dict(self.data))
        if isinstance(self.lora, Mapping):
            object.__setattr__(self, "lora", LoraSpec.from_dict(self.lora))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not self.name:
            raise ValueError("StageConfig.name must be a non-empty string")
        for key in ("steps", "batch_size", "grad_accum", "keep_last"):
            if getattr(self, key) < 1:
                raise ValueError(f"StageConfig.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "log_every", "eval_every", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"StageConfig.{key} must be >= 0, got {getattr(self, key)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"StageConfig.schedule {self.schedule!r} is unknown; choose from {SCHEDULES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"StageConfig.precision {self.precision!r} is unknown; choose from {PRECISIONS}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"StageConfig.strategy {self.strategy!r} is unknown; choose from {STRATEGIES}")
        if not (self.lr > 0):
            raise ValueError(f"StageConfig.lr must be > 0, got {self.lr}")
        if not (0.0 <= self.min_lr_ratio <= 1.0):
            raise ValueError(f"StageConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2:
            raise ValueError(f"StageConfig.betas must have 2 values, got {len(self.betas)}")
        if self.max_grad_norm is not None and not (self.max_grad_norm > 0):
            raise ValueError(f"StageConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm}")

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
        _check_keys(cls, data)
        d = dict(data)
        if "data" not in d:
            raise ValueError("StageConfig: missing key 'data'")
        d["data"] = DataConfig.from_dict(d["data"]) if isinstance(d["data"], Mapping) else d["data"]
        if d.get("lora") is not None and isinstance(d["lora"], Mapping):
            d["lora"] = LoraSpec.from_dict(d["lora"])
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

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
        stages = tuple(s if isinstance(s, StageConfig) else StageConfig.from_dict(s) for s in self.stages)
        object.__setattr__(self, "stages", stages)
        if not stages:
            raise ValueError("PlanConfig.stages is empty")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"PlanConfig: stage names must be unique, got {names}")

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
                raise ValueError("PlanConfig: missing key 'stages' (a list of stage tables)")
        extra = {k: v for k, v in data.items() if k not in ("stages", "extra")}
        extra.update(data.get("extra", {}))
        return cls(stages=tuple(StageConfig.from_dict(s) for s in data["stages"]), extra=extra)

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
        with p.open("rb") as fh:
            return tomllib.load(fh)
    if p.suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a JSON object at the top level, got {type(data).__name__}")
        return data
    raise ValueError(f"{p}: unknown config format {p.suffix!r}; use .toml or .json")
