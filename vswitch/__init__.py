"""vswitch: a userspace virtual switch and router for Linux network namespaces."""

__version__ = "0.1.0"
