"""The janus error tree: every error the runtime raises on purpose is a JanusError.

`transient` says whether retrying the same call later may succeed (a hub that was unreachable,
memory that was exhausted) or never will (a bad path, an image that cannot be decoded).
"""

from __future__ import annotations


class JanusError(Exception):
    """Base class of every error raised by the janus runtime."""

    transient: bool = False


class JanusLoadError(JanusError):
    """The checkpoint could not be loaded: missing path, not a Janus checkpoint, hub unreachable."""


class JanusRequestError(JanusError, ValueError):
    """A request carries invalid parameters (negative n, temperature, out-of-range seed...)."""


class JanusImageError(JanusError):
    """An input image cannot be decoded or converted to RGB; fails only its own request."""


class JanusRuntimeError(JanusError):
    """A forward pass failed (e.g. device out of memory); the batch may succeed if retried."""

    transient = True
