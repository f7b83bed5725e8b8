"""Provium: Lua tests that drive real Linux guests under QEMU."""

__version__ = "0.1.0"
