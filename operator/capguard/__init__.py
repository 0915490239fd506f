"""capguard: a Kubernetes operator that never lets a paused capacity backlog flush at once."""

__version__ = "0.1.0"
