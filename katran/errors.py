"""One exception hierarchy for the whole package.

``KatranError`` is the root.  Domain errors also subclass the matching
built-in exception, so callers that only know ``ValueError`` / ``KeyError``
keep working.
"""

from __future__ import annotations


class KatranError(Exception):
    """Root of every error raised by katran."""


class ValidationError(KatranError, ValueError):
    """Bad input: names the field and the value.  Nothing was changed."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={value!r}: {reason}")


class NotFoundError(KatranError, KeyError):
    """Unknown VIP, real, somark, ... .  Nothing was changed."""

    def __init__(self, what: str, key: object) -> None:
        self.what = what
        self.key = key
        super().__init__(f"{what} {key} not found")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AlreadyExistsError(KatranError, ValueError):
    """The object exists already.  Nothing was changed."""

    def __init__(self, what: str, key: object) -> None:
        self.what = what
        self.key = key
        super().__init__(f"{what} {key} already exists")


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
