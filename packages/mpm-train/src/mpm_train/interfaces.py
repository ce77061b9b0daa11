"""Public contracts of mpm-train: the protocols it consumes and the dataclasses it produces.

This package imports no other mpm package; ``integration/`` wires packages together through
these shapes.
"""

from __future__ import annotations
