"""``python -m hizfo.plan``: the planner ("Will it fit?"), the same entry point as ``python -m hizfo.run.plan``
(hizfo/run/plan.py has the keys and what it prints)."""
from __future__ import annotations

from hizfo.run.plan import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
