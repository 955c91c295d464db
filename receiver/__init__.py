"""Salesforce webhook receiver and event router."""

__version__ = "0.1.0"
__all__ = ["__version__"]
