"""mpm-train: staged training on webdataset shards, single process or torchrun (DDP/FSDP), exact resume.

>>> from mpm_train import StageConfig, DataConfig, DataSource, run_stage      # doctest: +SKIP
>>> cfg = StageConfig(name="align", steps=1000, batch_size=16, lr=1e-4, warmup_steps=50,
...                   data=DataConfig(sources=(DataSource("en", ("data/en-*.tar",), weight=0.95),
...                                            DataSource("zh", ("data/zh-*.tar",), weight=0.05))))
>>> result = run_stage(model, cfg, collate_fn=model.collate_fn, output_dir="runs/align")  # doctest: +SKIP
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_weights, verify_checkpoint
from .config import ConfigError, DataConfig, DataSource, LoraSpec, PlanConfig, StageConfig, changed_keys
from .data import (
    DataError,
    DataStream,
    ShardReader,
    ShardWriter,
    decode_sample,
    expand_shards,
    scan_shards,
    to_rgb,
    write_shards,
)
from .interfaces import (
    SKIP_REASONS,
    CollateFn,
    DataStats,
    EvalFn,
    PlanResult,
    StageResult,
    StepOutput,
    Trainable,
)
from .metrics import read_metrics
from .policy import Selection, apply_lora, model_parts
from .recipe import (
    ConfigChangedError,
    DivergenceError,
    NonFiniteLossError,
    StageConfigChangedError,
    StageStoppedError,
    check_plan,
    check_resume_config,
    lr_lambda,
    restore_plan,
    run_plan,
    run_stage,
)

try:
    __version__ = version("mpm-train")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "SKIP_REASONS",
    "CheckpointError",
    "CollateFn",
    "ConfigChangedError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DataSource",
    "DataStats",
    "DataStream",
    "DivergenceError",
    "EvalFn",
    "LoraSpec",
    "NonFiniteLossError",
    "PlanConfig",
    "PlanResult",
    "Selection",
    "ShardReader",
    "ShardWriter",
    "StageConfig",
    "StageConfigChangedError",
    "StageResult",
    "StageStoppedError",
    "StepOutput",
    "Trainable",
    "__version__",
    "apply_lora",
    "changed_keys",
    "check_plan",
    "check_resume_config",
    "decode_sample",
    "expand_shards",
    "latest_checkpoint",
    "list_checkpoints",
    "load_weights",
    "lr_lambda",
    "model_parts",
    "read_metrics",
    "restore_plan",
    "run_plan",
    "run_stage",
    "scan_shards",
    "to_rgb",
    "verify_checkpoint",
    "write_shards",
]
