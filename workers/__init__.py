"""Compatibility alias for a source checkout: ``from workers import handler``.

The worker code is the ``bridge.workers`` package; only that name is installed,
so a project's own ``workers`` package is never shadowed by bridge's (nor the
reverse). This folder is not installed; in a checkout it makes the old import
path name the very same modules (one handler registry, not two copies).
New code writes ``from bridge import handler``.
"""

import importlib
import sys

import bridge.workers as _real

for _name in ("registry", "builtin", "entry", "process"):
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"bridge.workers.{_name}")
sys.modules[__name__] = _real
