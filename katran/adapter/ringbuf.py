"""Consumer of a BPF ring buffer map (``BPF_MAP_TYPE_RINGBUF``) through libbpf.

``RingReader(map).poll(timeout_ms)`` waits (epoll) at most ``timeout_ms`` for records and
returns every record the ring holds, oldest first, each as bytes (copied out of the
ring, which is then free for the producer again).  One reader per ring.
"""

from __future__ import annotations

import errno

from katran.errors import KernelError, ValidationError

from .libbpf import Closing, ffi, lib

RINGBUF_MAP_TYPE = 27  # BPF_MAP_TYPE_RINGBUF


class RingReader(Closing):
    """Reads records from one ring buffer map (``katran.adapter.bpf.Map`` or a map fd)."""

    def __init__(self, ring_map) -> None:  # type: ignore[no-untyped-def]
        self._rb = ffi.NULL
        if getattr(ring_map, "type", RINGBUF_MAP_TYPE) != RINGBUF_MAP_TYPE:
            raise ValidationError("ring_map", getattr(ring_map, "name", ring_map), "is not a ring buffer map")
        fd = ring_map if isinstance(ring_map, int) else ring_map.fd
        self._records: list[bytes] = []

        @ffi.callback("ring_buffer_sample_fn")
        def _sample(ctx, data, size):  # type: ignore[no-untyped-def]
            self._records.append(ffi.buffer(data, size)[:])
            return 0

        self._sample = _sample  # keep the callback alive as long as the ring
        rb = lib.ring_buffer__new(fd, _sample, ffi.NULL, ffi.NULL)
        if rb == ffi.NULL:
            raise KernelError(f"open ring buffer (map fd {fd})", ffi.errno or errno.EINVAL)
        self._rb = rb

    def _live(self):  # type: ignore[no-untyped-def]
        if self._rb == ffi.NULL:
            raise KernelError("use of a closed ring buffer reader", errno.EBADF)
        return self._rb

    def poll(self, timeout_ms: int = 100) -> list[bytes]:
        """Records available within ``timeout_ms`` (0: do not wait; -1: wait forever)."""
        ret = lib.ring_buffer__poll(self._live(), int(timeout_ms))
        if ret < 0 and ret != -errno.EINTR:
            raise KernelError("poll ring buffer", -ret)
        out, self._records = self._records, []
        return out

    def drain(self) -> list[bytes]:
        """Every record in the ring now, without waiting."""
        ret = lib.ring_buffer__consume(self._live())
        if ret < 0 and ret != -errno.EINTR:
            raise KernelError("consume ring buffer", -ret)
        out, self._records = self._records, []
        return out

    def fileno(self) -> int:
        """An epoll fd that is readable when records are waiting."""
        return int(lib.ring_buffer__epoll_fd(self._live()))

    def close(self) -> None:
        rb = getattr(self, "_rb", ffi.NULL)
        if rb != ffi.NULL:
            lib.ring_buffer__free(rb)
        self._rb = ffi.NULL
