"""Issue 13, points 4 and 7: truncated shards, BOM-prefixed JSON, a source that is all broken."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from _mpm_train_toy import ToyCaptioner, collate, keys_of, make_shards

from conftest import stage
from mpm_train import DataConfig, DataError, DataSource, DataStream, ShardReader, decode_sample, run_stage
from mpm_train.cli import main
from mpm_train.data import index_path, read_shard_index, scan_shards


def _one_shard(root: Path, n: int = 16) -> Path:
    [shard] = make_shards(root, n=n, per_shard=n)
    return shard


def _cut(shard: Path, *, member: int, where: str) -> int:
    """Truncate ``shard`` inside the header (or the data) of its ``member``-th member; returns the cut."""
    with tarfile.open(shard) as tf:
        m = tf.getmembers()[member]
    cut = m.offset + 100 if where == "header" else m.offset_data + 50
    shard.write_bytes(shard.read_bytes()[:cut])
    return cut


def _epoch(root: Path, *, streams: int = 1) -> tuple[list[str], dict[str, int]]:
    """Every sample one epoch delivers (over all streams) and the summed skip counts."""
    cfg = DataConfig(
        sources=(DataSource("en", (str(root / "en-*.tar"),)),), shuffle_buffer=4, num_streams=streams
    )
    reader = ShardReader(cfg, seed=0, rank=0, world_size=1)
    keys: list[str] = []
    for s in reader.streams:
        while s.sources[0].epoch == 0:
            keys.append(s.next_sample()["__key__"])
            if s.sources[0].epoch > 0:  # the draw that crossed the epoch belongs to the next one
                keys.pop()
    return keys, {k: v for k, v in reader.stats.skipped.items() if v}


def test_writer_records_a_shard_index(tmp_path: Path) -> None:
    paths = make_shards(tmp_path, n=20, per_shard=8)
    counts = [read_shard_index(p) for p in paths]
    assert [c["samples"] for c in counts if c] == [8, 8, 4]
    assert all(c and c["bytes"] == p.stat().st_size for c, p in zip(counts, paths))
    assert scan_shards([str(tmp_path / "*")])["shards"] == 3  # a broad glob skips the index files


@pytest.mark.parametrize("where", ["header", "data"])
def test_every_undelivered_sample_is_counted_once(tmp_path: Path, where: str) -> None:
    shard = _one_shard(tmp_path)
    _cut(shard, member=22, where=where)  # sample 11's first member (json)
    keys, skipped = _epoch(tmp_path)
    assert sorted(keys) == [f"en{i:05d}" for i in range(11)]
    # before: header cut -> skipped {} (5 samples gone without a word); data cut -> 2 of the 5 counted
    assert sum(skipped.values()) == 16 - 11
    assert skipped == ({"tar_error": 5} if where == "header" else {"tar_error": 4, "missing_image": 1})


def test_truncation_without_an_index_is_still_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shard = _one_shard(tmp_path)
    index_path(shard).unlink()
    _cut(shard, member=22, where="header")
    keys, skipped = _epoch(tmp_path)
    assert len(keys) == 11 and skipped == {"tar_error": 1}  # the loss is unknowable: one count, not zero
    assert "is damaged" in caplog.text and "no .index.json to count them" in caplog.text


def test_lost_samples_are_counted_once_across_streams_and_resumes(tmp_path: Path) -> None:
    shard = _one_shard(tmp_path)
    _cut(shard, member=22, where="header")
    keys, skipped = _epoch(tmp_path, streams=2)  # one shard, two streams: each keeps every 2nd sample
    assert sorted(keys) == [f"en{i:05d}" for i in range(11)] and skipped == {"tar_error": 5}
    # a resumed stream (replaying its position) does not count the loss a second time
    cfg = DataConfig(sources=(DataSource("en", (str(tmp_path / "en-*.tar"),)),), shuffle_buffer=4)
    a = DataStream(cfg, stream=0, num_streams=1, seed=0)
    for _ in range(13):  # past the end of the damaged shard: the loss was counted
        a.next_sample()
    b = DataStream(cfg, stream=0, num_streams=1, seed=0)
    b.load_state_dict(a.state_dict())
    assert keys_of(b.next_sample() for _ in range(12)) == keys_of(a.next_sample() for _ in range(12))
    assert b.stats == a.stats and a.stats.skipped["tar_error"] == 10  # two epochs, 5 each


def test_check_shards_strict_fails_on_a_truncated_tar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shard = _one_shard(tmp_path)
    cut = _cut(shard, member=22, where="header")
    assert main(["check-shards", str(tmp_path / "en-*.tar")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 11 and report["skipped"]["tar_error"] == 5
    [damaged] = report["damaged"]
    assert damaged["shard"] == str(shard) and damaged["lost"] == 5 and damaged["offset"] <= cut
    assert main(["check-shards", "--strict", str(tmp_path / "en-*.tar")]) == 1  # before: 0
    capsys.readouterr()
    assert main(["check-shards", str(tmp_path / "nothing-*.tar")]) == 2
    assert capsys.readouterr().err.strip() == "mpm-train: shard pattern '" + str(
        tmp_path / "nothing-*.tar"
    ) + ("' matches no file")


def test_bom_prefixed_json_is_read() -> None:
    raw = {"__key__": "k", "json": "\ufeff".encode() + json.dumps({"caption": "ok"}).encode()}
    sample, reason = decode_sample(raw, source="s", require_image=False)
    assert (
        reason is None and sample is not None and sample["json"] == {"caption": "ok"}
    )  # before: json_decode


def test_an_undecodable_source_fails_naming_it(tmp_path: Path) -> None:
    make_shards(tmp_path / "data", name="en", n=32, per_shard=16)
    make_shards(tmp_path / "data", name="zh", n=64, per_shard=16, corrupt={"image": list(range(64))})
    data = DataConfig(
        sources=(
            DataSource("en", (str(tmp_path / "data" / "en-*.tar"),), weight=0.5),
            DataSource("zh", (str(tmp_path / "data" / "zh-*.tar"),), weight=0.5),
        ),
        shuffle_buffer=8,
    )
    # before: trained on, zh silently at weight 0 instead of 0.5
    with pytest.raises(DataError, match=r"source 'zh': 32 of 32 samples .* mixture weight 0.5"):
        run_stage(
            ToyCaptioner(),
            stage(tmp_path, steps=20, data=data),
            collate_fn=collate,
            output_dir=tmp_path / "r",
        )
    off = DataConfig(
        sources=data.sources, shuffle_buffer=8, max_skip_fraction=1.0
    )  # the budget is configurable
    res = run_stage(
        ToyCaptioner(),
        stage(tmp_path, steps=20, data=off),
        collate_fn=collate,
        output_dir=tmp_path / "off",
        progress=False,
    )
    assert res.data.samples_by_source == {"en": 80} and res.data.skipped_by_source["zh"] > 32
