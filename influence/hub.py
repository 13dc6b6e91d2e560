"""Whether the Hugging Face hub can be reached: one cheap check shared by pools and models."""

from __future__ import annotations

import os
import socket

OFFLINE_VARIABLES = ("INFLUENCE_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
HUB_HOST = ("huggingface.co", 443)


def offline_requested() -> bool:
    """True when an environment variable asks for offline operation."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)


def hub_reachable(timeout: float = 2.0) -> bool:
    """A cheap check (one TCP connect) so that the offline default starts at once."""
    if offline_requested():
        return False
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False
