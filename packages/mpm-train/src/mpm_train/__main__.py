"""``python -m mpm_train`` (and ``torchrun ... -m mpm_train run plan.toml``)."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
