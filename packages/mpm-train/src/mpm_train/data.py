"""Webdataset shards: a writer, and a deterministic, resumable, mixture reader for training.

Shard layout (plain webdataset): ``<key>.png`` (or ``.jpg``/``.jpeg``/``.webp``) plus ``<key>.json``
(a caption, a conversation, any JSON). Tar parsing and sample grouping use webdataset's own
``tar_file_expander`` / ``group_by_keys``.

Why a custom iteration order instead of ``webdataset.WebDataset(...).shuffle(...)``: training must
resume *exactly* after a crash. Here the order is a pure function of ``(seed, source, stream, epoch)``,
so a reader's position is a handful of integers (epoch and samples consumed per source, mixture
draws per stream) that go into the checkpoint; resuming replays the current epoch's raw bytes (no
image decoding) up to that position.

Streams: the data is read as ``num_streams`` independent streams, each from disjoint shards (or,
when a source has fewer shards than streams, disjoint samples). Under ``torchrun`` rank ``r`` owns
streams ``r, r + W, ...``; its micro-batch takes an equal share from each stream it owns. With
``num_streams`` fixed, the global batch is identical for any world size that divides it.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from webdataset import ShardWriter as _WdsShardWriter
from webdataset.tariterators import group_by_keys, tar_file_expander

from .config import DataConfig, DataSource
from .interfaces import SKIP_REASONS, DataStats

log = logging.getLogger("mpm_train.data")

IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")
_MAX_CONSECUTIVE_SKIPS = 1000
_MIXTURE_BLOCK = 1024


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
class ShardWriter:
    """Write ``(key, image, json)`` samples into numbered webdataset tar shards.

    >>> with ShardWriter("out/en-%06d.tar", max_count=1000) as w:   # doctest: +SKIP
    ...     w.write(key="0001", image=pil_image, json={"caption": "a red apple"})
    >>> w.paths                                                      # doctest: +SKIP
    [PosixPath('out/en-000000.tar')]

    Images may be ``PIL.Image``, an ``HxWxC`` uint8 array, or already-encoded bytes (written as is
    with ``image_format`` as the extension). Keys must be unique and contain no ``.`` (webdataset
    splits the file name at the first dot).
    """

    def __init__(
        self,
        pattern: str | Path,
        *,
        max_count: int = 1000,
        max_size: float = 1e9,
        image_format: str = "png",
        mtime: int | None = None,
    ) -> None:
        pattern = str(pattern)
        try:
            pattern % 0
        except TypeError as exc:
            raise ValueError(f"shard pattern {pattern!r} needs one integer field such as %06d") from exc
        fmt = image_format.lower()
        if fmt not in IMAGE_EXTENSIONS:
            raise ValueError(f"image_format {image_format!r} is unknown; choose from {IMAGE_EXTENSIONS}")
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        Path(pattern % 0).parent.mkdir(parents=True, exist_ok=True)
        self.image_format = "jpg" if fmt == "jpeg" else fmt
        self.paths: list[Path] = []
        self.count = 0
        self._keys: set[str] = set()
        # An integer mtime keeps tar members in plain USTAR headers: webdataset's default float
        # time.time() adds a PAX header to every member, which nearly doubles tar parsing time.
        self._writer: _WdsShardWriter | None = _WdsShardWriter(
            pattern,
            maxcount=max_count,
            maxsize=max_size,
            verbose=0,
            mtime=int(time.time()) if mtime is None else int(mtime),
            post=lambda fname: self.paths.append(Path(fname)),
        )

    def _encode_image(self, image: Any) -> bytes:
        if isinstance(image, bytes | bytearray):
            return bytes(image)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise ValueError(f"image array must be uint8 HxWxC, got dtype {image.dtype}")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(f"image must be a PIL.Image, uint8 array or bytes, got {type(image).__name__}")
        buf = io.BytesIO()
        if self.image_format == "jpg":
            image.convert("RGB").save(buf, format="JPEG", quality=95)
        else:
            image.save(buf, format=self.image_format.upper())
        return buf.getvalue()

    def write(self, *, key: str, json: Any, image: Any = None) -> None:
        """Add one sample; ``image`` may be ``None`` for text-only data."""
        if not key or "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must be non-empty and contain no '.' or '/'")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r}")
        if self._writer is None:
            raise RuntimeError("ShardWriter is closed")
        self._keys.add(key)
        sample: dict[str, Any] = {"__key__": key, "json": _json_bytes(json)}
        if image is not None:
            sample[self.image_format] = self._encode_image(image)
        self._writer.write(sample)
        self.count += 1

    def close(self) -> list[Path]:
        """Finish the last shard; returns the shard paths written."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.paths

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def write_shards(
    samples: Sequence[Mapping[str, Any]] | Iterator[Mapping[str, Any]],
    pattern: str | Path,
    *,
    max_count: int = 1000,
    image_format: str = "png",
) -> list[Path]:
    """Write samples (dicts with ``key``, ``json`` and optional ``image``) to shards; returns paths."""
    with ShardWriter(pattern, max_count=max_count, image_format=image_format) as writer:
        for s in samples:
            writer.write(key=str(s["key"]), json=s["json"], image=s.get("image"))
    return writer.paths


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------
def decode_sample(
    raw: Mapping[str, Any], *, source: str, require_image: bool = True
) -> tuple[dict[str, Any] | None, str | None]:
    """Decode one raw webdataset sample; returns ``(sample, None)`` or ``(None, reason)``."""
    if "json" not in raw:
        return None, "missing_json"
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
    if image_ext is None and require_image:
        return None, "missing_image"
    try:
        payload = json.loads(raw["json"].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "json_decode"
    image = None
    if image_ext is not None:
        try:
            im = Image.open(io.BytesIO(raw[image_ext]))
            im.load()  # force the decode here so truncated data fails here, not in collate
            image = im if im.mode == "RGB" else im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
            return None, "image_decode"
    return {
        "__key__": raw["__key__"],
        "__url__": raw.get("__url__"),
        "__source__": source,
        "image": image,
        "json": payload,
    }, None


def expand_shards(patterns: Sequence[str]) -> list[str]:
    """Expand globs (sorted, de-duplicated); a pattern that matches nothing is an error."""
    out: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise FileNotFoundError(f"shard pattern {pattern!r} matches no file")
        out.extend(matches)
    return sorted(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------
# Reading: one source within one stream
# ---------------------------------------------------------------------------------------------
class _SourceStream:
    """The raw samples of one source for one data stream: infinite epochs, shuffled per epoch."""

    def __init__(
        self,
        source: DataSource,
        shards: list[str],
        *,
        index: int,
        stream: int,
        num_streams: int,
        seed: int,
        shuffle_buffer: int,
        stats: _StreamStats,
    ) -> None:
        self.source = source
        self.shards = shards
        self.index = index
        self.stream = stream
        self.num_streams = num_streams
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.stats = stats
        self.epoch = 0
        self.consumed = 0  # raw samples handed out in the current epoch
        self._replaying = False
        self._it: Iterator[dict[str, Any]] = self._epoch_iter(0)

    def _handler(self, exn: BaseException) -> bool:
        if not self._replaying:  # counted once, the first time; a resume replays without recounting
            self.stats.skip("tar_error", self.source.name)
            log.warning("source %r: skipping unreadable shard data: %s", self.source.name, exn)
        return True

    def _open(self, urls: list[str]) -> Iterator[dict[str, Any]]:
        for url in urls:
            try:
                fh = open(url, "rb")
            except OSError as exn:
                self._handler(exn)
                continue
            try:
                yield {"url": url, "stream": fh}
            finally:
                fh.close()

    def _epoch_iter(self, epoch: int) -> Iterator[dict[str, Any]]:
        # Shard order: same for every stream (seeded without the stream index), then split.
        order = list(self.shards)
        random.Random(f"shards:{self.seed}:{self.index}:{epoch}").shuffle(order)
        split_samples = len(order) < self.num_streams
        mine = order if split_samples else order[self.stream :: self.num_streams]
        raw = group_by_keys(tar_file_expander(self._open(mine), handler=self._handler), handler=self._handler)
        if split_samples:  # fewer shards than streams: every stream reads all, keeps every n-th sample
            raw = (s for i, s in enumerate(raw) if i % self.num_streams == self.stream)
        if self.shuffle_buffer <= 1:  # no shuffling: shard order only
            yield from raw
            return
        rng = random.Random(f"buffer:{self.seed}:{self.index}:{self.stream}:{epoch}")
        buf: list[dict[str, Any]] = []
        for sample in raw:
            if len(buf) < self.shuffle_buffer:
                buf.append(sample)
                continue
            j = rng.randrange(len(buf))
            out, buf[j] = buf[j], sample
            yield out
        rng.shuffle(buf)
        yield from buf

    def next_raw(self) -> dict[str, Any]:
        for _ in range(2):
            try:
                sample = next(self._it)
            except StopIteration:
                if self.consumed == 0 and not self._replaying:
                    raise RuntimeError(
                        f"source {self.source.name!r} stream {self.stream}: an epoch over {len(self.shards)} "
                        f"shard(s) produced no sample (skipped so far: {self.stats.skipped})"
                    ) from None
                self.epoch += 1
                self.consumed = 0
                self._it = self._epoch_iter(self.epoch)
                continue
            self.consumed += 1
            return sample
        raise RuntimeError(f"source {self.source.name!r} stream {self.stream}: epoch {self.epoch} is empty")

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Jump to ``(epoch, consumed)`` by replaying that epoch's raw samples (no decoding)."""
        self.epoch, self.consumed = int(state["epoch"]), 0
        self._it = self._epoch_iter(self.epoch)
        self._replaying = True
        try:
            for _ in range(int(state["consumed"])):
                self.consumed += 1
                next(self._it)
        except StopIteration as exc:
            raise RuntimeError(
                f"source {self.source.name!r}: the checkpoint's read position (epoch {self.epoch}, "
                f"{state['consumed']} samples) is past the end of the shards; did the shards change?"
            ) from exc
        finally:
            self._replaying = False


class _StreamStats:
    def __init__(self) -> None:
        self.stats = DataStats()

    @property
    def skipped(self) -> dict[str, int]:
        return {k: v for k, v in self.stats.skipped.items() if v}

    def skip(self, reason: str, source: str) -> None:
        self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1
        self.stats.skipped_by_source[source] = self.stats.skipped_by_source.get(source, 0) + 1

    def ok(self, source: str) -> None:
        self.stats.samples += 1
        self.stats.samples_by_source[source] = self.stats.samples_by_source.get(source, 0) + 1


# ---------------------------------------------------------------------------------------------
# Reading: one stream (all sources, mixed)
# ---------------------------------------------------------------------------------------------
class DataStream:
    """One deterministic stream of decoded samples drawn from a weighted mixture of sources.

    The source of the ``i``-th draw comes from a counter-based generator seeded with
    ``(seed, stream, i // 1024)``, so the mixture position is the draw counter alone.
    """

    def __init__(self, data: DataConfig, *, stream: int, num_streams: int, seed: int) -> None:
        if not 0 <= stream < num_streams:
            raise ValueError(f"stream index {stream} is outside [0, {num_streams})")
        self.data = data
        self.stream = stream
        self.seed = seed
        self._stats = _StreamStats()
        self.sources = [
            _SourceStream(
                src,
                expand_shards(src.shards),
                index=i,
                stream=stream,
                num_streams=num_streams,
                seed=seed,
                shuffle_buffer=data.shuffle_buffer,
                stats=self._stats,
            )
            for i, src in enumerate(data.sources)
        ]
        w = np.array([s.weight for s in data.sources], dtype=np.float64)
        self._p = w / w.sum()
        self.draws = 0
        self._block_id = -1
        self._block: np.ndarray = np.zeros(0, dtype=np.int64)

    @property
    def stats(self) -> DataStats:
        return self._stats.stats

    def _choose(self) -> int:
        if len(self.sources) == 1:
            self.draws += 1
            return 0
        block = self.draws // _MIXTURE_BLOCK
        if block != self._block_id:
            rng = np.random.default_rng([self.seed, self.stream, block])
            self._block = rng.choice(len(self.sources), size=_MIXTURE_BLOCK, p=self._p)
            self._block_id = block
        i = int(self._block[self.draws % _MIXTURE_BLOCK])
        self.draws += 1
        return i

    def next_sample(self) -> dict[str, Any]:
        """The next decodable sample; undecodable ones are skipped, counted by reason, and logged."""
        consecutive = 0
        while True:
            src = self.sources[self._choose()]
            raw = src.next_raw()
            sample, reason = decode_sample(raw, source=src.source.name, require_image=self.data.require_image)
            if sample is not None:
                self._stats.ok(src.source.name)
                return sample
            assert reason is not None
            self._stats.skip(reason, src.source.name)
            log.warning(
                "source %r: skipping sample %r from %s (%s)",
                src.source.name,
                raw.get("__key__"),
                raw.get("__url__"),
                reason,
            )
            consecutive += 1
            if consecutive >= _MAX_CONSECUTIVE_SKIPS:
                raise RuntimeError(
                    f"stream {self.stream}: {consecutive} consecutive samples could not be "
                    f"decoded (skipped: {self._stats.skipped}); the shards look broken"
                )

    def state_dict(self) -> dict[str, Any]:
        return {
            "draws": self.draws,
            "sources": {s.source.name: s.state_dict() for s in self.sources},
            "stats": self.stats.to_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        names = {s.source.name for s in self.sources}
        if set(state["sources"]) != names:
            raise ValueError(
                f"stream {self.stream}: checkpoint sources {sorted(state['sources'])} differ from "
                f"the config's {sorted(names)}"
            )
        for s in self.sources:
            s.load_state_dict(state["sources"][s.source.name])
        self.draws = int(state["draws"])
        self._stats.stats = DataStats.from_dict(state["stats"])


# ---------------------------------------------------------------------------------------------
# Reading: what one rank reads
# ---------------------------------------------------------------------------------------------
class ShardReader:
    """The samples of one rank: its streams ``rank, rank + world_size, ...``.

    ``next_batch(n)`` returns ``n`` decoded samples, ``n / len(streams)`` from each owned stream in
    stream order (``n`` must divide evenly). Iterating yields samples round-robin over the streams.
    ``state_dict()`` / ``load_state_dict()`` carry the exact read position and the skip counts.
    """

    def __init__(self, data: DataConfig, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        num_streams = data.num_streams or world_size
        if num_streams % world_size != 0:
            raise ValueError(
                f"data.num_streams={num_streams} is not a multiple of the world size {world_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        self.data = data
        self.num_streams = num_streams
        self.rank = rank
        self.world_size = world_size
        self.streams = [
            DataStream(data, stream=s, num_streams=num_streams, seed=seed)
            for s in range(rank, num_streams, world_size)
        ]

    def next_batch(self, batch_size: int) -> list[dict[str, Any]]:
        k = len(self.streams)
        if batch_size % k != 0:
            raise ValueError(
                f"batch_size {batch_size} is not divisible by the {k} data streams of this rank "
                f"(num_streams={self.num_streams}, world_size={self.world_size})"
            )
        per = batch_size // k
        return [s.next_sample() for s in self.streams for _ in range(per)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            for s in self.streams:
                yield s.next_sample()

    @property
    def stats(self) -> DataStats:
        out = DataStats()
        for s in self.streams:
            out = out.merge(s.stats)
        return out

    def state_dict(self) -> dict[str, Any]:
        """``{"streams": {stream_index: state}}``: stream states are independent of the world size."""
        return {
            "num_streams": self.num_streams,
            "streams": {str(s.stream): s.state_dict() for s in self.streams},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["num_streams"]) != self.num_streams:
            raise ValueError(
                f"checkpoint has {state['num_streams']} data streams, this run {self.num_streams}; "
                "set data.num_streams to the checkpoint's value to resume exactly"
            )
        for s in self.streams:
            s.load_state_dict(state["streams"][str(s.stream)])


def skip_reasons() -> tuple[str, ...]:
    """The reasons a sample can be skipped (the keys of ``DataStats.skipped``)."""
    return SKIP_REASONS
