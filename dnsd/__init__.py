"""dnsd: authoritative DNS for the global addresses of Kubernetes pods."""

__version__ = "0.1.0"
