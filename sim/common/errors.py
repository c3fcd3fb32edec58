"""The one exception type every command turns into a clear one-line error and a non-zero exit."""

from __future__ import annotations


class MoesimError(Exception):
    """A user-facing error: bad input, a wrong schema, an impossible config.

    The message must name what was wrong and where (file, row, token, key) and what was expected.
    The CLI prints ``moesim: error: <message>`` on one line and exits with status 2.
    """


class TraceFormatError(MoesimError):
    """A routing or request trace that is malformed or violates the schema."""


class ConfigError(MoesimError):
    """A configuration that cannot be run (unknown policy, impossible budget, ...)."""


def short_error(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), for one-line errors."""
    s = str(exc).strip().splitlines()
    return s[0][:200] if s else type(exc).__name__
