"""Webdataset shards: a writer, and a deterministic, resumable, mixture reader for training.

Shard layout (plain webdataset): ``<key>.png`` (or ``.jpg``/``.jpeg``/``.webp``) plus ``<key>.json``
(a caption, a conversation, any JSON). ``ShardWriter`` also writes ``<shard>.index.json`` next to
each shard (its sample count and size, like the shard index of webdataset's ``wids``), so that a
reader can count every sample a damaged shard could not deliver.

Damaged shards: Python's ``tarfile`` (and with it webdataset's ``tar_file_iterator``) stops
*silently* at a truncated or invalid member header, so a shard cut inside a header loses its
remaining samples without a word. :class:`ShardScan` reads members itself and checks that the
archive ends with a tar end-of-archive block; a shard that does not is damaged: reported once, with
the byte offset, and its undelivered samples (index count minus samples read) are counted under
``tar_error``, each exactly once. Sample grouping is webdataset's own ``group_by_keys``.

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
import re
import tarfile
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from webdataset import ShardWriter as _WdsShardWriter
from webdataset.tariterators import group_by_keys

from .config import DataConfig, DataSource
from .interfaces import SKIP_REASONS, DataStats

log = logging.getLogger("mpm_train.data")

IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")
INDEX_SUFFIX = ".index.json"
_MAX_CONSECUTIVE_SKIPS = 1000
_MIXTURE_BLOCK = 1024
_BUDGET_MIN_SAMPLES = 32  # a source's skip budget is checked once this many of its samples were read
_META_NAME = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: members such as __index__


class DataError(RuntimeError):
    """The data cannot be read as configured (a source yields nothing, or exceeds its skip budget)."""


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
        self._shard_start = 0  # self.count when the current shard began
        self._keys: set[str] = set()
        # An integer mtime keeps tar members in plain USTAR headers: webdataset's default float
        # time.time() adds a PAX header to every member, which nearly doubles tar parsing time.
        self._writer: _WdsShardWriter | None = _WdsShardWriter(
            pattern,
            maxcount=max_count,
            maxsize=max_size,
            verbose=0,
            mtime=int(time.time()) if mtime is None else int(mtime),
            post=self._finished_shard,
        )

    def _finished_shard(self, fname: str) -> None:
        """Called by webdataset after each shard is closed: record it and write its index."""
        path = Path(fname)
        self.paths.append(path)
        write_shard_index(path, samples=self.count - self._shard_start)
        self._shard_start = self.count

    def _encode_image(self, image: Any, key: str) -> bytes:
        if isinstance(image, bytes | bytearray):
            if not image:
                raise ValueError(f"sample {key!r}: the encoded image is empty (0 bytes)")
            return bytes(image)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise ValueError(f"sample {key!r}: image array must be uint8 HxWxC, got dtype {image.dtype}")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"sample {key!r}: image must be a PIL.Image, uint8 array or bytes, got {type(image).__name__}"
            )
        if image.width < 1 or image.height < 1:
            raise ValueError(f"sample {key!r}: empty image ({image.width}x{image.height} pixels)")
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
        # encode before registering the key: a sample that fails to encode leaves no trace, and the
        # caller may write a mended sample under the same key
        sample: dict[str, Any] = {"__key__": key, "json": _json_bytes(json)}
        if image is not None:
            sample[self.image_format] = self._encode_image(image, key)
        self._keys.add(key)
        # webdataset starts a new shard (calling _finished_shard for the old one) inside write()
        # before adding the sample; the sample then belongs to the new shard.
        before = len(self.paths)
        self._writer.write(sample)
        if len(self.paths) != before:
            self._shard_start = self.count
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


def index_path(shard: str | Path) -> Path:
    """Where the index of ``shard`` lives: ``<shard>.index.json``."""
    return Path(f"{shard}{INDEX_SUFFIX}")


def write_shard_index(shard: str | Path, *, samples: int) -> Path:
    """Write ``<shard>.index.json``: the shard's sample count and byte size (atomically)."""
    path = index_path(shard)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(
        json.dumps(
            {"format": "mpm-shard-index", "version": 1, "samples": samples, "bytes": os.path.getsize(shard)}
        ),
        encoding="utf-8",
    )
    os.replace(tmp, path)
    return path


def read_shard_index(shard: str | Path) -> dict[str, int] | None:
    """``{"samples": n, "bytes": size}`` from ``<shard>.index.json``; ``None`` when absent or unreadable."""
    path = index_path(shard)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {"samples": int(data["samples"]), "bytes": int(data["bytes"])}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable shard index %s: %s", path, exc)
        return None


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
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL image as 8-bit RGB, by the one conversion rule that training and inference share.

    - 16-bit modes (``I;16*``, and ``I``, how 16-bit PNGs also open) are *scaled*: ``v / 257``
      (0..65535 -> 0..255, rounded; ``I`` is clipped to 0..65535 first). PIL's ``convert`` would
      clip everything above 255 to white. ``F`` is on PIL's 0..255 scale, clipped and rounded.
    - Transparency (an alpha channel, or a ``transparency`` colour/palette entry) is composited
      onto ``background`` (white): a plain ``convert("RGB")`` turns transparent pixels black,
      which emoji and icons are mostly made of.
    - Everything else goes through ``convert("RGB")`` (L, 1, P, CMYK, YCbCr, ...).

    mpm-vision's ``processing._to_pil`` and mpm-paint's ``training._to_rgb`` keep copies of this
    function (packages do not import each other); ``tests/test_pixel_rule.py`` proves they agree.
    """
    transparency = image.info.get("transparency")
    if image.mode in _HIGH_DEPTH_MODES:
        values = np.asarray(image).astype(np.float64)
        scaled = values if image.mode == "F" else np.clip(values, 0, 65535) / 257.0
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        if isinstance(transparency, int | float) and not isinstance(transparency, bool):
            alpha = np.where(values == transparency, 0, 255).astype(np.uint8)
            image = Image.fromarray(np.stack([gray, alpha], axis=-1), mode="LA")
        else:
            return Image.fromarray(gray, mode="L").convert("RGB")
    elif image.mode == "RGB" and transparency is None:
        return image
    if image.mode in _ALPHA_MODES or transparency is not None:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def decode_sample(
    raw: Mapping[str, Any],
    *,
    source: str,
    require_image: bool = True,
    background: tuple[int, int, int] = (255, 255, 255),
) -> tuple[dict[str, Any] | None, str | None]:
    """Decode one raw webdataset sample; returns ``(sample, None)`` or ``(None, reason)``.

    JSON is UTF-8, with or without a byte-order mark; images become RGB by :func:`to_rgb`
    (transparency over ``background``, 16-bit scaled).
    """
    if "json" not in raw:
        return None, "missing_json"
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
    if image_ext is None and require_image:
        return None, "missing_image"
    try:
        payload = json.loads(raw["json"].decode("utf-8-sig"))  # utf-8-sig: a leading BOM is valid
    except (UnicodeDecodeError, ValueError):
        return None, "json_decode"
    image = None
    if image_ext is not None:
        try:
            im = Image.open(io.BytesIO(raw[image_ext]))
            im.load()  # force the decode here so truncated data fails here, not in collate
            image = to_rgb(im, background)
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
    """Expand globs (sorted, de-duplicated); a pattern that matches nothing is an error.

    Shard index files (``*.index.json``) matched by a broad glob are not shards and are left out.
    """
    out: list[str] = []
    for pattern in patterns:
        matches = [m for m in sorted(glob.glob(os.path.expanduser(pattern))) if not m.endswith(INDEX_SUFFIX)]
        if not matches:
            raise FileNotFoundError(f"shard pattern {pattern!r} matches no file")
        out.extend(matches)
    return sorted(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------
# Reading one shard, noticing damage
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardDamage:
    """Why a shard stopped early: ``offset`` is the byte where reading failed (``None``: unopenable)."""

    shard: str
    offset: int | None
    problem: str


_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)


class ShardScan:
    """The raw samples of one shard (webdataset's ``group_by_keys`` over its members), and what was lost.

    Iterate it once. Afterwards ``delivered`` is the number of samples read (broken ones included:
    the decoder counts those), ``damage`` says where and why reading stopped early (``None`` for an
    intact shard), ``expected`` is the shard index's sample count (``None`` without an index) and
    ``lost`` the samples that were never read (``expected - delivered``; ``None`` when unknowable).
    """

    def __init__(self, shard: str) -> None:
        self.shard = shard
        self.delivered = 0
        self.damage: ShardDamage | None = None
        self.duplicates = 0
        index = read_shard_index(shard)
        self.expected: int | None = None
        if index is not None:
            try:
                size = os.path.getsize(shard)
            except OSError:
                size = -1
            self._index_bytes_match = size == index["bytes"]
            self.expected = index["samples"]
        else:
            self._index_bytes_match = False

    @property
    def lost(self) -> int | None:
        if self.expected is None or not (self._index_bytes_match or self.damage is not None):
            return None if self.damage is not None else 0
        return max(0, self.expected - self.delivered)

    def _members(self) -> Iterator[dict[str, Any]]:
        try:
            tf = tarfile.open(self.shard, mode="r:*")
        except _TAR_ERRORS as exc:
            self.damage = ShardDamage(self.shard, None, f"cannot be opened as a tar archive: {exc}")
            return
        with tf:
            while True:
                offset = tf.offset
                try:
                    member = tf.next()
                except _TAR_ERRORS as exc:
                    self.damage = ShardDamage(self.shard, offset, f"unreadable member header: {exc}")
                    return
                if member is None:
                    break
                tf.members = []  # type: ignore[attr-defined]  # stream through: keep no TarInfo list
                name = member.name
                if not member.isreg() or _META_NAME.match(name):
                    continue
                try:
                    fh = tf.extractfile(member)
                    data = fh.read() if fh is not None else b""
                except _TAR_ERRORS as exc:
                    self.damage = ShardDamage(
                        self.shard, member.offset, f"member {name!r} is cut short: {exc}"
                    )
                    return
                yield {"fname": name, "data": data, "__url__": self.shard}
            # tarfile ends the iteration silently at a truncated or invalid header; an intact
            # archive ends with an all-zero end-of-archive block at that offset.
            try:
                assert tf.fileobj is not None
                tf.fileobj.seek(tf.offset)
                tail = tf.fileobj.read(tarfile.BLOCKSIZE)
            except _TAR_ERRORS:
                tail = b""
            if len(tail) < tarfile.BLOCKSIZE or tail.count(0) != tarfile.BLOCKSIZE:
                what = "the file ends" if not tail else "an unreadable member header"
                self.damage = ShardDamage(
                    self.shard,
                    tf.offset,
                    f"truncated or damaged: {what} at byte {tf.offset} instead of the end-of-archive block",
                )

    def _duplicate(self, exn: BaseException) -> bool:
        self.duplicates += 1
        log.warning("shard %s: %s (the first copy is kept)", self.shard, exn)
        return True

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample in group_by_keys(self._members(), handler=self._duplicate):
            self.delivered += 1
            yield sample

    def describe(self) -> str:
        """One line: the damage and how many samples it cost."""
        assert self.damage is not None
        lost = self.lost
        cost = (
            f"{lost} of its {self.expected} samples could not be read"
            if lost is not None
            else f"the samples after byte {self.damage.offset} are lost (no {INDEX_SUFFIX} to count them; "
            "shards written by mpm_train.ShardWriter have one)"
        )
        return f"shard {self.shard} is damaged ({self.damage.problem}); {cost}"


def scan_shards(
    patterns: Sequence[str], *, require_image: bool = True, background: tuple[int, int, int] = (255, 255, 255)
) -> dict[str, Any]:
    """Read and decode every sample of the shards once; what ``mpm-train check-shards`` prints.

    Returns ``{"shards": n, "samples": decodable, "skipped": {reason: count}, "damaged": [...]}``,
    each damaged shard as ``{"shard", "offset", "problem", "lost"}`` (``lost`` is ``None`` when the
    shard has no index to count with; it then adds one to ``tar_error``).
    """
    paths = expand_shards(patterns)
    stats = DataStats()
    damaged: list[dict[str, Any]] = []
    for path in paths:
        scan = ShardScan(path)
        for raw in scan:
            sample, reason = decode_sample(
                raw, source="check", require_image=require_image, background=background
            )
            if sample is None:
                stats.skipped[reason or "unknown"] = stats.skipped.get(reason or "unknown", 0) + 1
            else:
                stats.samples += 1
        lost = scan.lost
        if lost:
            stats.skipped["tar_error"] += lost
        if scan.damage is not None:
            if lost is None:
                stats.skipped["tar_error"] += 1
            damaged.append(
                {"shard": path, "offset": scan.damage.offset, "problem": scan.damage.problem, "lost": lost}
            )
    return {"shards": len(paths), "samples": stats.samples, "skipped": stats.skipped, "damaged": damaged}


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
        self._split_samples = len(shards) < num_streams
        self._it: Iterator[dict[str, Any]] = self._epoch_iter(0)

    def _mine(self, i: int) -> bool:
        return not self._split_samples or i % self.num_streams == self.stream

    def _account(self, scan: ShardScan, first_index: int) -> int:
        """Count what a shard could not deliver (once: not again while replaying); returns how many it lost."""
        lost = scan.lost
        if lost:
            mine = sum(1 for i in range(first_index, first_index + lost) if self._mine(i))
            if mine and not self._replaying:
                for _ in range(mine):
                    self.stats.skip("tar_error", self.source.name)
        if scan.damage is not None and not self._replaying:
            if lost is None and self._mine(first_index):  # unknown loss: one count, by one stream
                self.stats.skip("tar_error", self.source.name)
            if self._mine(first_index):
                log.warning("source %r: %s", self.source.name, scan.describe())
        return lost or 0

    def _raw_samples(self, shards: list[str]) -> Iterator[dict[str, Any]]:
        index = 0  # running sample index over the epoch's shards (split mode keeps every n-th)
        for url in shards:
            scan = ShardScan(url)
            for sample in scan:
                if self._mine(index):
                    yield sample
                index += 1
            index += self._account(scan, index)

    def _epoch_iter(self, epoch: int) -> Iterator[dict[str, Any]]:
        # Shard order: same for every stream (seeded without the stream index), then split.
        order = list(self.shards)
        random.Random(f"shards:{self.seed}:{self.index}:{epoch}").shuffle(order)
        self._split_samples = len(order) < self.num_streams
        # fewer shards than streams: every stream reads all, keeps every n-th sample
        mine = order if self._split_samples else order[self.stream :: self.num_streams]
        raw = self._raw_samples(mine)
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
                    raise DataError(
                        f"source {self.source.name!r} stream {self.stream}: an epoch over {len(self.shards)} "
                        f"shard(s) produced no sample (skipped so far: {self.stats.skipped})"
                    ) from None
                self.epoch += 1
                self.consumed = 0
                self._it = self._epoch_iter(self.epoch)
                continue
            self.consumed += 1
            return sample
        raise DataError(f"source {self.source.name!r} stream {self.stream}: epoch {self.epoch} is empty")

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
        """The next decodable sample; undecodable ones are skipped, counted by reason, and logged.

        Raises ``DataError`` naming the source once a source exceeds ``data.max_skip_fraction``.
        """
        consecutive = 0
        while True:
            src = self.sources[self._choose()]
            raw = src.next_raw()
            name = src.source.name
            self._check_budget(src)  # samples a damaged shard lost are counted while reading it
            sample, reason = decode_sample(
                raw, source=name, require_image=self.data.require_image, background=self.data.background
            )
            if sample is not None:
                self._stats.ok(name)
                return sample
            assert reason is not None
            self._stats.skip(reason, name)
            log.warning(
                "source %r: skipping sample %r from %s (%s)",
                name,
                raw.get("__key__"),
                raw.get("__url__"),
                reason,
            )
            self._check_budget(src)
            consecutive += 1
            if consecutive >= _MAX_CONSECUTIVE_SKIPS:
                raise DataError(
                    f"stream {self.stream}: {consecutive} consecutive samples could not be "
                    f"decoded (skipped: {self._stats.skipped}); the shards look broken"
                )

    def _check_budget(self, src: _SourceStream) -> None:
        """Stop when a source delivers too little: its mixture weight would silently shrink towards 0."""
        st, name = self.stats, src.source.name
        bad = st.skipped_by_source.get(name, 0)
        total = bad + st.samples_by_source.get(name, 0)
        limit = self.data.max_skip_fraction
        if limit >= 1.0 or bad <= limit * total or (total < _BUDGET_MIN_SAMPLES and src.epoch == 0):
            return
        raise DataError(
            f"source {name!r}: {bad} of {total} samples read so far could not be delivered "
            f"({bad / total:.0%}, over the budget data.max_skip_fraction={limit}); its mixture weight "
            f"{src.source.weight} would silently shrink towards 0. Fix or drop its shards "
            f"({', '.join(src.source.shards)}), or raise data.max_skip_fraction (1.0 turns the check off)"
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
