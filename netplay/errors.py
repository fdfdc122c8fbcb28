"""The two error families: the peer misbehaved, or we misused our own API."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error this package raises about the protocol."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow.

    ``fatal`` says whether the byte stream can still be trusted: a fatal error
    (unknown letter, oversized frame) leaves the framing unusable and the
    connection must be dropped; a non-fatal one (bad JSON inside an intact
    frame, a message not valid in the current state) is logged and ignored.
    ``context`` holds key-value pairs worth putting in the log line.
    """

    def __init__(self, reason: str, *, fatal: bool, **context: object) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal
        self.context = context


class LocalProtocolError(ProtocolError):
    """Our own code asked for something the protocol cannot express."""
