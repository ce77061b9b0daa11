"""Public contracts of mpm-train: the protocols it consumes and the dataclasses it produces.

This package imports no other mpm package; ``integration/`` wires packages together through
these shapes.

Consumed
--------
``Trainable``: an ``nn.Module`` with ``stage_parameters(stage)`` and ``training_step(batch)``, and
optionally ``parts()``. Its checkpoint state is its own ``state_dict()`` restricted to the parameters
the stage trains. A Trainable only *answers* which parameters train; mpm-train does the freezing
(``mpm_train.policy.freeze``), in one explicit step.
``StepOutput``: what ``training_step`` may return instead of a bare loss tensor (``.loss`` and an
optional ``.logs`` mapping of floats or scalar tensors, e.g. a dataclass or a transformers
``ModelOutput``).
``CollateFn``: the model side's ``list[sample] -> batch``; a sample is a dict with ``"image"`` (an RGB
``PIL.Image`` or ``None``), ``"json"`` (the parsed JSON: caption, conversation...), ``"__key__"``,
``"__url__"`` and ``"__source__"`` (the ``DataSource`` name).

Produced
--------
``DataStats``, ``StageResult``, ``PlanResult`` (dataclasses, JSON round-trip).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

#: Reasons a sample is skipped; every skipped sample is counted under exactly one of them.
SKIP_REASONS: tuple[str, ...] = ("tar_error", "missing_image", "missing_json", "image_decode", "json_decode")


@runtime_checkable
class StepOutput(Protocol):
    """A training-step result with a scalar ``loss`` (``logs`` is optional, read with ``getattr``)."""

    @property
    def loss(self) -> torch.Tensor: ...


@runtime_checkable
class Trainable(Protocol):
    """What ``run_stage`` trains. Implementations are ``nn.Module`` subclasses.

    ``stage_parameters(stage)`` is a query: it returns the parameters (or ``(name, parameter)``
    pairs) that train in the named preset stage and changes nothing (no ``requires_grad``); it is
    asked only for stages without a ``trainable`` table. ``training_step(batch)`` returns the scalar
    loss of one micro-batch (mean over its samples), either as a tensor or as a ``StepOutput``.

    Optional hooks, used when present: ``parts() -> Mapping[str, nn.Module]`` (the named parts a
    stage's ``trainable`` table refers to, e.g. ``{"encoder": ..., "bridge": ..., "lm": ...}``;
    default: the top-level submodules), ``fsdp_units() -> Iterable[nn.Module]`` (the submodules
    FSDP shards separately, e.g. transformer blocks) and ``gradient_checkpointing_enable()``.
    """

    def stage_parameters(self, stage: str) -> Iterable[nn.Parameter] | Iterable[tuple[str, nn.Parameter]]: ...

    def training_step(self, batch: Any) -> torch.Tensor | StepOutput: ...

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...

    def train(self, mode: bool = True) -> Any: ...


CollateFn = Callable[[list[dict[str, Any]]], Any]
EvalFn = Callable[[nn.Module], Mapping[str, float]]


@dataclass
class DataStats:
    """Counts of one reader (or, summed, of a whole run): nothing skipped is ever hidden."""

    samples: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    samples_by_source: dict[str, int] = field(default_factory=dict)
    skipped_by_source: dict[str, int] = field(default_factory=dict)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def merge(self, other: DataStats) -> DataStats:
        out = DataStats(samples=self.samples + other.samples)
        for reason in set(self.skipped) | set(other.skipped):
            out.skipped[reason] = self.skipped.get(reason, 0) + other.skipped.get(reason, 0)
        for src in set(self.samples_by_source) | set(other.samples_by_source):
            out.samples_by_source[src] = self.samples_by_source.get(src, 0) + other.samples_by_source.get(
                src, 0
            )
        for src in set(self.skipped_by_source) | set(other.skipped_by_source):
            out.skipped_by_source[src] = self.skipped_by_source.get(src, 0) + other.skipped_by_source.get(
                src, 0
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataStats:
        return cls(
            samples=int(data.get("samples", 0)),
            skipped={
                **dict.fromkeys(SKIP_REASONS, 0),
                **{k: int(v) for k, v in data.get("skipped", {}).items()},
            },
            samples_by_source={k: int(v) for k, v in data.get("samples_by_source", {}).items()},
            skipped_by_source={k: int(v) for k, v in data.get("skipped_by_source", {}).items()},
        )


@dataclass
class StageResult:
    """What ``run_stage`` returns (also written to ``<output_dir>/result.json``).

    ``losses``: the global mean loss of every optimizer step ``1..final_step`` (restored across
    resumes). ``checkpoint``: the final checkpoint directory; ``weights``: its ``model.safetensors``
    (the trainable parameters only). ``data``: sample counts summed over all ranks, skipped ones by
    reason. ``resumed_from``: the step the run resumed from, ``None`` for a fresh start. ``elapsed_s``: the
    loop's wall time in this process (setup excluded; checkpoint writing included, ``checkpoint_s``).
    ``fingerprint``: what the result depends on (stage config without bookkeeping keys, the hash of
    the stage it started from, the plan's context); ``config_hash``: its SHA-256. ``run_plan``
    compares it before skipping a finished stage.
    """

    stage: str
    final_step: int
    losses: list[float]
    checkpoint: Path
    weights: Path
    output_dir: Path
    metrics_path: Path
    data: DataStats
    world_size: int
    strategy: str
    resumed_from: int | None = None
    elapsed_s: float = 0.0
    samples_per_s: float = 0.0
    eval_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint_s: float = 0.0
    config_hash: str | None = None
    fingerprint: dict[str, Any] | None = None

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")

    @property
    def skipped(self) -> dict[str, int]:
        return dict(self.data.skipped)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("checkpoint", "weights", "output_dir", "metrics_path"):
            d[key] = str(d[key])
        d["data"] = self.data.to_dict()
        return d

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageResult:
        d = dict(data)
        for key in ("checkpoint", "weights", "output_dir", "metrics_path"):
            d[key] = Path(d[key])
        d["data"] = DataStats.from_dict(d["data"])
        d["losses"] = [float(x) for x in d["losses"]]
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> StageResult:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass
class PlanResult:
    """The results of a plan's stages, in order."""

    stages: list[StageResult]

    @property
    def final(self) -> StageResult:
        return self.stages[-1]

    def __getitem__(self, name: str) -> StageResult:
        for s in self.stages:
            if s.stage == name:
                return s
        raise KeyError(f"no stage {name!r}; stages are {[s.stage for s in self.stages]}")

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [s.to_dict() for s in self.stages]}
