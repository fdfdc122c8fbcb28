"""structlog set-up, done once by the command line entry point."""

from __future__ import annotations

import logging
import signal
import sys
from typing import TextIO

import structlog
import trio

LEVELS = ("debug", "info", "warning", "error")


def announcer(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger for the few info lines an operator needs whatever ``--log-level`` says:
    which port the server listens on (``--port 0``), that it got a stop signal,
    that it stopped.  Its lines keep their real level (info) and logger ``name``.

    The standard library's logger ``name`` is set to INFO for this; the level
    filter of ``structlog.get_logger(name)`` still applies to everything else.
    """
    stdlib_logger = logging.getLogger(name)
    stdlib_logger.setLevel(logging.INFO)
    return structlog.wrap_logger(
        stdlib_logger,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=False,  # follows every configure_logging, tests' too
    )


def configure_logging(
    *, log_format: str = "console", level: str = "info", stream: TextIO | None = None
) -> None:
    """Route structlog and the standard library's logging to one renderer.

    ``log_format`` is ``console`` (aligned, for people) or ``json`` (one object
    per line, for machines).  Per-connection context is bound with
    ``structlog.contextvars`` by the server and merged into every line.
    """
    stream = stream or sys.stderr
    numeric_level = logging.getLevelName(level.upper())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)


async def wait_for_stop_signal() -> None:
    """Return at the first SIGINT or SIGTERM, after logging which one came."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            structlog.get_logger("netplay").info(
                "signal_received", signal=signal.Signals(signum).name
            )
            return
