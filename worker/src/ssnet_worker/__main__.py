"""``python -m ssnet_worker``: same as the ``ssnet-worker`` command."""

from __future__ import annotations

from ssnet_worker.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
