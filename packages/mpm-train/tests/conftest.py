"""Local fixtures of mpm-train's tests (the shared ones live in the repository's root conftest)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    from _mpm_train_toy import make_shards

    return make_shards(tmp_path / "data", n=64, per_shard=16)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded on a shared 2-core machine; restore afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def stage(tmp_path: Path, **kw: object):
    """A small StageConfig over ``tmp_path/data/en-*.tar`` (override any field)."""
    from mpm_train import DataConfig, DataSource, StageConfig

    data = kw.pop("data", None) or DataConfig(
        sources=(DataSource("en", (str(tmp_path / "data" / "en-*.tar"),)),), shuffle_buffer=16
    )
    base: dict[str, object] = {
        "name": "full",
        "steps": 6,
        "batch_size": 4,
        "lr": 1e-2,
        "log_every": 2,
        "checkpoint_every": 0,
        "data": data,
    }
    base.update(kw)
    return StageConfig(**base)  # type: ignore[arg-type]
