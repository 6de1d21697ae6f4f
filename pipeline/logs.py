"""Process-wide logging setup: one line per event, with the process's stage name in every line.

Must not import `stages` or `engines`.
"""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)-7s %(process_name)s %(name)s: %(message)s"


class _ProcessNameFilter(logging.Filter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_name = self.process_name
        return True


def setup_logging(process_name: str, level: str = "INFO") -> None:
    """Configure the root logger of this process (stderr); idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_ProcessNameFilter(process_name))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter that would otherwise print one line per frame.
    for noisy in ("ultralytics", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
