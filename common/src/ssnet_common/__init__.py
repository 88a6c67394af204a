"""Shared pieces of ssnet-server: wire protocol, ndarray codec, LArCV1 image meta, errors, config."""

__version__ = "0.1.0"
