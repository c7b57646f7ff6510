"""One exception hierarchy for the whole package.

``KatranError`` is the root.  Domain errors also subclass the matching
built-in exception, so callers that only know ``ValueError`` / ``KeyError``
keep working.
"""

from __future__ import annotations

# Longest value text an error message quotes, and longest message a server
# sends back or logs: a 4 MB address must not become a 4 MB reply / log line.
MAX_VALUE_TEXT = 64
MAX_MESSAGE_TEXT = 512


def safe_text(text: object, limit: int = MAX_MESSAGE_TEXT) -> str:
    """``text`` as printable ASCII (other characters backslash-escaped), at most ~``limit`` chars.

    Used for every error text a server sends (gRPC details and trailers must
    be ASCII) or logs.
    """
    text = str(text)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} chars)"
    out = text.encode("ascii", "backslashreplace").decode("ascii")
    if not out.isprintable():
        out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in out)
    if len(out) > limit + 32:  # escapes can grow the text up to 10x
        out = f"{out[:limit]}... ({len(text)} chars)"
    return out


def safe_repr(value: object, limit: int = MAX_VALUE_TEXT) -> str:
    """repr() of a (user supplied) value, ASCII-only and truncated to about ``limit`` chars."""
    if isinstance(value, (str, bytes, bytearray)) and len(value) > limit:
        return f"{ascii(value[:limit])[:-1]}...{ascii(value[:limit])[-1]} ({len(value)} chars)"
    text = ascii(value)
    if len(text) > limit + 2:
        return f"{text[:limit]}... ({len(text)} chars)"
    return text


class KatranError(Exception):
    """Root of every error raised by katran."""


class ValidationError(KatranError, ValueError):
    """Bad input: names the field and the value.  Nothing was changed."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={safe_repr(value)}: {reason}")


class NotFoundError(KatranError, KeyError):
    """Unknown VIP, real, somark, ... .  Nothing was changed."""

    def __init__(self, what: str, key: object) -> None:
        self.what = what
        self.key = key
        super().__init__(f"{what} {safe_text(key, MAX_VALUE_TEXT * 2)} not found")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AlreadyExistsError(KatranError, ValueError):
    """The object exists already.  Nothing was changed."""

    def __init__(self, what: str, key: object) -> None:
        self.what = what
        self.key = key
        super().__init__(f"{what} {safe_text(key, MAX_VALUE_TEXT * 2)} already exists")


class CapacityError(KatranError, OverflowError):
    """A configured capacity (max VIPs, max reals, ...) is exhausted."""


class BuildError(KatranError, FileNotFoundError):
    """Compiled BPF objects or the native helper are missing."""


class KernelError(KatranError, OSError):
    """A kernel/libbpf call failed; the message names the operation and errno."""

    def __init__(self, operation: str, errno_: int, detail: str = "") -> None:
        import errno as _errno
        import os

        name = _errno.errorcode.get(errno_, str(errno_))
        msg = f"{operation}: {name} ({os.strerror(errno_)})"
        if detail:
            msg += f": {detail}"
        super().__init__(errno_, msg)
        self.operation = operation
        self.errno_name = name

    def __str__(self) -> str:
        return str(self.args[1])


class FeatureNotEnabledError(KatranError):
    """The feature is not compiled into / enabled in the loaded BPF object."""


class NotStartedError(KatranError, RuntimeError):
    """The load balancer (or a manager) is used before ``start()`` / ``load()``."""
