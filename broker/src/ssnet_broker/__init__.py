"""ssnet-server's Majordomo broker: ``ssnet-broker`` / ``python -m ssnet_broker``."""

__version__ = "0.1.0"
