"""Embedded servers the processor can start for development and tests."""
