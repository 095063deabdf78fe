"""Pytest plugins: fixtures for real servers, loaded with ``-p plugins.<name>``."""
