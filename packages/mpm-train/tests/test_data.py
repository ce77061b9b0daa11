from __future__ import annotations

import itertools
import tarfile
from pathlib import Path

import numpy as np
import pytest
from _mpm_train_toy import keys_of, make_shards
from PIL import Image

from mpm_train import DataConfig, DataSource, DataStream, ShardReader, ShardWriter


def _data(tmp_path: Path, buf: int = 8, streams: int | None = None, **srcs: float) -> DataConfig:
    sources = tuple(
        DataSource(name, (str(tmp_path / "data" / f"{name}-*.tar"),), weight=w) for name, w in srcs.items()
    )
    return DataConfig(
        sources=sources or (DataSource("en", (str(tmp_path / "data" / "en-*.tar"),)),),
        shuffle_buffer=buf,
        num_streams=streams,
    )


def test_writer_reader_round_trip_one_epoch(tmp_path: Path, shards: list[Path]) -> None:
    assert len(shards) == 4 and all(p.exists() for p in shards)
    stream = DataStream(_data(tmp_path), stream=0, num_streams=1, seed=0)
    got = [stream.next_sample() for _ in range(64)]
    assert sorted(keys_of(got)) == [f"en{i:05d}" for i in range(64)]  # every sample exactly once per epoch
    assert keys_of(got) != sorted(keys_of(got))  # and shuffled
    s = got[0]
    assert isinstance(s["image"], Image.Image) and s["image"].size == (8, 8) and s["image"].mode == "RGB"
    assert set(s["json"]) == {"label", "caption"} and s["__source__"] == "en"
    assert stream.stats.samples == 64 and stream.stats.total_skipped == 0


def test_writer_validates_keys_and_images(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "x-%03d.tar") as w:
        with pytest.raises(ValueError, match="contain no"):
            w.write(key="a.b", json={})
        w.write(key="a", json={}, image=np.zeros((4, 4, 3), np.uint8))
        with pytest.raises(ValueError, match="duplicate"):
            w.write(key="a", json={})
        with pytest.raises(ValueError, match=r"'b'.*uint8"):
            w.write(key="b", json={}, image=np.zeros((4, 4, 3), np.float32))
        with pytest.raises(ValueError, match=r"'c'.*empty image \(0x0"):
            w.write(key="c", json={}, image=Image.new("RGB", (0, 0)))
        with pytest.raises(ValueError, match=r"'d'.*0 bytes"):
            w.write(key="d", json={}, image=b"")
        w.write(key="c", json={}, image=np.zeros((4, 4, 3), np.uint8))  # a refused sample left no trace
    with pytest.raises(ValueError, match="integer field"):
        ShardWriter(tmp_path / "no-pattern.tar")
    with tarfile.open(w.paths[0]) as tf:
        assert sorted(tf.getnames()) == ["a.json", "a.png", "c.json", "c.png"]
    assert w.count == 2


def test_same_seed_same_order_other_seed_other_order(tmp_path: Path, shards: list[Path]) -> None:
    def order(seed: int) -> list[str]:
        st = DataStream(_data(tmp_path), stream=0, num_streams=1, seed=seed)
        return keys_of(st.next_sample() for _ in range(100))  # crosses an epoch boundary

    assert order(1) == order(1)
    assert order(1) != order(2)


def test_state_dict_resumes_exactly(tmp_path: Path) -> None:
    make_shards(tmp_path / "data", name="en", n=48, per_shard=8, corrupt={"image": [5]})
    make_shards(tmp_path / "data", name="zh", n=16, per_shard=8, seed=1)
    cfg = _data(tmp_path, en=0.7, zh=0.3)
    a = DataStream(cfg, stream=0, num_streams=1, seed=3)
    for _ in range(70):
        a.next_sample()
    state = a.state_dict()
    expected = keys_of(a.next_sample() for _ in range(40))
    b = DataStream(cfg, stream=0, num_streams=1, seed=3)
    b.load_state_dict(state)
    assert keys_of(b.next_sample() for _ in range(40)) == expected
    assert b.stats == a.stats  # skip counts travel with the position


def test_mixture_weights(tmp_path: Path) -> None:
    make_shards(tmp_path / "data", name="en", n=32, per_shard=8)
    make_shards(tmp_path / "data", name="zh", n=32, per_shard=8, seed=1)
    st = DataStream(_data(tmp_path, buf=0, en=0.9, zh=0.1), stream=0, num_streams=1, seed=0)
    srcs = [st.next_sample()["__source__"] for _ in range(600)]
    share = srcs.count("zh") / len(srcs)
    assert 0.06 < share < 0.14, share


def test_corrupt_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    make_shards(tmp_path / "data", n=32, per_shard=8, corrupt={"image": [1, 9], "json": [2], "no_json": [3]})
    # a truncated shard: keep only the first 3 KiB of the last one
    last = sorted((tmp_path / "data").glob("en-*.tar"))[-1]
    last.write_bytes(last.read_bytes()[:3000])
    st = DataStream(_data(tmp_path), stream=0, num_streams=1, seed=0)
    got = keys_of(st.next_sample() for _ in range(20))
    bad = {"en00001", "en00009", "en00002", "en00003"}
    assert not bad & set(got)
    sk = st.stats.skipped
    assert sk["image_decode"] == 2 and sk["json_decode"] == 1 and sk["missing_json"] == 1
    assert sk["tar_error"] >= 1  # the truncated shard is reported, not hidden
    assert st.stats.skipped_by_source["en"] == st.stats.total_skipped


def test_streams_are_disjoint_and_cover_everything(tmp_path: Path, shards: list[Path]) -> None:
    cfg = _data(tmp_path, streams=2)
    rank_keys = []
    for rank in range(2):
        r = ShardReader(cfg, seed=0, rank=rank, world_size=2)
        rank_keys.append(keys_of(itertools.islice(r, 32)))
    assert not set(rank_keys[0]) & set(rank_keys[1])
    assert len(set(rank_keys[0]) | set(rank_keys[1])) == 64
    # one process owning both streams builds the same global batch: half from each stream
    single = ShardReader(cfg, seed=0, rank=0, world_size=1)
    b = single.next_batch(8)
    assert keys_of(b) == rank_keys[0][:4] + rank_keys[1][:4]
    with pytest.raises(ValueError, match="not divisible"):
        single.next_batch(3)


def test_fewer_shards_than_streams_splits_samples(tmp_path: Path) -> None:
    make_shards(tmp_path / "data", n=10, per_shard=16)  # one shard
    cfg = _data(tmp_path, streams=2)
    k0 = keys_of(itertools.islice(ShardReader(cfg, rank=0, world_size=2), 5))
    k1 = keys_of(itertools.islice(ShardReader(cfg, rank=1, world_size=2), 5))
    assert sorted(k0 + k1) == [f"en{i:05d}" for i in range(10)]


def test_missing_shards_and_bad_world_size_fail_clearly(tmp_path: Path, shards: list[Path]) -> None:
    with pytest.raises(FileNotFoundError, match="matches no file"):
        DataStream(
            DataConfig(sources=(DataSource("x", (str(tmp_path / "nope-*.tar"),)),)),
            stream=0,
            num_streams=1,
            seed=0,
        )
    with pytest.raises(ValueError, match="not a multiple of the world size"):
        ShardReader(_data(tmp_path, streams=3), world_size=2)
