"""The installed distribution's version: the package's ``__version__``, and what the faces report (RTVI's ``about``).

A module of its own so that a face can read it without importing the package root, which
imports the chat face.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["__version__"]

try:
    __version__ = metadata.version("antiphon")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
