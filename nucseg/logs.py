"""Logging for workflow scripts: everything, including an uncaught error, goes to the rule's log file."""

from __future__ import annotations

import logging
import sys
from types import TracebackType


def setup_logging(path: str | None, level: int = logging.INFO) -> None:
    """Send the package's log records to ``path`` (and stderr); log uncaught exceptions there too."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        handlers.append(logging.FileHandler(path, mode="w"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)

    def excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        logging.getLogger("nucseg").error("%s: %s", kind.__name__, value, exc_info=(kind, value, tb))

    sys.excepthook = excepthook
