"""A leaseholder as its own process, for the tests that kill one: prints `gained CAMERA AT` / `lost CAMERA AT`
(wall-clock seconds) on stdout as its leases change, until it is killed.

    python -m tests.engines.lease_holder NATS_URL HOST TTL_S CAMERA...
"""

from __future__ import annotations

import sys
import threading
import time

from engines.leases import CameraLeases


def main(url: str, host: str, ttl_s: str, *cameras: str) -> None:
    def report(camera: str, held: bool) -> None:
        print(f"{'gained' if held else 'lost'} {camera} {time.time():.3f}", flush=True)

    leases = CameraLeases(url, host=host, cameras=cameras, ttl_s=float(ttl_s), on_change=report)
    leases.start()
    threading.Event().wait()


if __name__ == "__main__":
    main(*sys.argv[1:])
