"""Stage policies: what trains in a stage, part by part, and with which learning rate.

A stage names the model's *parts* in ``StageConfig.trainable`` and says, for each, how it trains::

    trainable = { encoder = false, bridge = true, lm = "lora" }
    part_lr = { bridge = 1e-4 }

- ``true``: every parameter of the part; ``false``: none; parts not named are frozen too;
- ``"lora"``: only LoRA adapters, injected into the part with peft (``StageConfig.lora``);
- any other string: a regular expression; the part's parameters whose name *inside the part*
  matches (``re.search``) train, e.g. ``unet = "attn2"`` for a UNet's cross-attention only.

The parts are what ``model.parts()`` returns (``{name: submodule}``), or the model's top-level
submodules when it has no such method. Without a ``trainable`` table the model's own
``stage_parameters(stage name)`` answers (the stage's name then picks one of the model's presets).

Two steps, in this order, and nothing else changes ``requires_grad``:

1. :func:`select` answers which parameters train (it adds LoRA adapters where the stage asks for
   them: that is a change of the model's structure, not of what is frozen);
2. :func:`freeze` sets ``requires_grad`` to exactly that selection.

:func:`param_groups` then gives each part its own optimizer parameter groups (its ``part_lr`` or the
stage ``lr``; weight decay on matrices only), and :func:`train_mode` keeps the batch-norm statistics
of frozen layers fixed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .config import LoraSpec, StageConfig

__all__ = ["Selection", "apply_lora", "freeze", "model_parts", "param_groups", "select", "train_mode"]

#: The part name of parameters chosen by ``stage_parameters`` (a stage without a trainable table).
WHOLE_MODEL = ""


@dataclass(frozen=True)
class Selection:
    """The parameters one stage trains, by their ``model.named_parameters()`` name, per part.

    ``by_part`` keeps the policy's part order; the legacy ``stage_parameters`` path puts every
    name under the part ``""``. ``lora`` lists the LoRA adapter parameters among them.
    """

    by_part: dict[str, list[str]]
    lora: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Every selected name, part by part."""
        return [n for names in self.by_part.values() for n in names]

    def part_of(self) -> dict[str, str]:
        """``{parameter name: part}`` for every selected parameter."""
        return {n: part for part, names in self.by_part.items() for n in names}


def apply_lora(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Inject peft LoRA adapters into ``model`` (idempotent); returns the adapter parameter names.

    This is the one place LoRA adapters are added to a model in mpm: a stage asks for them with
    ``trainable = {part = "lora"}`` (adapters in that part only) or, without a trainable table, with
    ``lora`` alone (adapters wherever ``target_modules`` match).
    """
    existing = [n for n, _ in model.named_parameters() if "lora_" in n]
    if existing:
        return existing
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise ImportError("LoRA stages need peft: pip install 'mpm-train[peft]'") from exc
    targets: Any = spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets)
    try:
        inject_adapter_in_model(config, model)
    except ValueError as err:  # peft: "Target modules ... not found in the base model"
        raise ValueError(f"LoRA target_modules {spec.target_modules!r} matched no module: {err}") from None
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    if not names:
        raise ValueError(f"LoRA target_modules {spec.target_modules!r} matched no module of the model")
    return names


def model_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The model's parts: ``model.parts()`` when it has that hook, else its top-level submodules."""
    hook = getattr(model, "parts", None)
    parts = dict(hook()) if callable(hook) else dict(model.named_children())
    own = {id(m) for m in model.modules()}
    for name, module in parts.items():
        if not isinstance(module, nn.Module) or id(module) not in own:
            raise TypeError(f"{type(model).__name__}.parts()[{name!r}] is not a submodule of the model")
    return parts


def _names_by_id(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def _stage_parameter_names(model: nn.Module, stage: str, by_id: Mapping[int, str]) -> list[str]:
    chosen: list[str] = []
    for item in model.stage_parameters(stage):  # type: ignore[operator]
        p = item[1] if isinstance(item, tuple) else item
        if id(p) not in by_id:
            raise ValueError(
                f"stage {stage!r}: stage_parameters() returned a parameter that is not in "
                "model.named_parameters()"
            )
        chosen.append(by_id[id(p)])
    return chosen


def select(model: nn.Module, config: StageConfig) -> Selection:
    """Which parameters ``config`` trains (adding the LoRA adapters it asks for); sets no ``requires_grad``.

    Raises ``ValueError`` naming the part when a part is unknown or its rule selects nothing.
    """
    if not config.trainable:
        lora = apply_lora(model, config.lora) if config.lora is not None else []
        by_id = _names_by_id(model)
        chosen = set(_stage_parameter_names(model, config.name, by_id)) | set(lora)
        if not chosen:
            raise ValueError(
                f"stage {config.name!r}: model.stage_parameters({config.name!r}) returned no parameters"
            )
        names = [n for n in by_id.values() if n in chosen]  # model order, tied weights once
        return Selection(by_part={WHOLE_MODEL: names}, lora=[n for n in names if n in set(lora)])

    parts = model_parts(model)
    unknown = [p for p in config.trainable if p not in parts]
    if unknown:
        raise ValueError(
            f"stage {config.name!r}: trainable names unknown part(s) {unknown}; "
            f"{type(model).__name__} has parts {sorted(parts)}"
        )
    lora_ids: set[int] = set()
    for part, how in config.trainable.items():
        if how == "lora":
            assert config.lora is not None  # StageConfig gives "lora" parts the default spec
            apply_lora(parts[part], config.lora)
            lora_ids |= {id(p) for n, p in parts[part].named_parameters() if "lora_" in n}
    by_id = _names_by_id(model)  # after injection: adapters have names now
    taken: set[str] = set()
    by_part: dict[str, list[str]] = {}
    for part, how in config.trainable.items():
        if how is False:
            continue
        inner = list(parts[part].named_parameters())
        picked: list[nn.Parameter]
        if how is True:
            picked = [p for _, p in inner]
        elif how == "lora":
            picked = [p for _, p in inner if id(p) in lora_ids]
        else:
            pattern = re.compile(str(how))
            picked = [p for n, p in inner if pattern.search(n)]
        if not picked:
            raise ValueError(f"stage {config.name!r}: trainable.{part} = {how!r} selects no parameter")
        names = [by_id[id(p)] for p in picked if by_id[id(p)] not in taken]  # a tied weight trains once
        taken.update(names)
        by_part[part] = names
    lora = [name for pid, name in by_id.items() if pid in lora_ids and name in taken]
    return Selection(by_part=by_part, lora=lora)


def freeze(model: nn.Module, selection: Selection) -> list[str]:
    """The explicit freezing step: ``requires_grad`` is true exactly for the selected parameters."""
    chosen = set(selection.names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return [n for n, _ in model.named_parameters() if n in chosen]


def param_groups(
    trainable: Sequence[tuple[str, nn.Parameter]], selection: Selection, config: StageConfig
) -> tuple[list[dict[str, Any]], list[str]]:
    """Optimizer parameter groups: per part, its learning rate (``part_lr`` or ``lr``), and weight decay on
    matrices only (not on biases and norm scales). Returns the groups and the parameter names in
    group order (the checkpoint's key order)."""
    part_of = selection.part_of()
    order = list(selection.by_part)
    groups: list[dict[str, Any]] = []
    names: list[str] = []
    for part in order:
        lr = config.part_lr.get(part, config.lr)
        mine = [(n, p) for n, p in trainable if part_of.get(n) == part]
        for decay, members in (
            (config.weight_decay, [(n, p) for n, p in mine if p.dim() >= 2]),
            (0.0, [(n, p) for n, p in mine if p.dim() < 2]),
        ):
            if members:
                groups.append(
                    {"params": [p for _, p in members], "weight_decay": decay, "lr": lr, "part": part}
                )
                names.extend(n for n, _ in members)
    missing = sorted({n for n, _ in trainable} - set(names))
    if missing:
        raise ValueError(f"trainable parameters outside the stage's selection: {missing[:5]}")
    return groups, names


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except batch-norm layers whose own parameters are frozen: they stay in eval
    mode, so a frozen part's running statistics (buffers, not in the checkpoint) never drift."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
