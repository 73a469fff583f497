"""dsguard: find, inventory and stop Direct Send spoofing."""

__version__ = "0.1.0"
