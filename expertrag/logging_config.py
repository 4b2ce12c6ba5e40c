"""The one place that configures the ``expertrag`` logger for command-line use."""

from __future__ import annotations

import logging


def configure_logging(verbose: bool = False) -> None:
    """Send expertrag's logs to stderr, at INFO with ``verbose`` and WARNING otherwise."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    package_logger = logging.getLogger("expertrag")
    package_logger.handlers[:] = [handler]
    package_logger.setLevel(logging.INFO if verbose else logging.WARNING)
    package_logger.propagate = False
