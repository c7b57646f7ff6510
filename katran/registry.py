"""The control plane's bookkeeping: real indices, reference counts, address <-> index,
VIP numbers, staged in a :class:`Transaction` and committed or rolled back with it.

Every mutation of ``KatranLb`` follows one pattern::

    validate (raise before anything changes)
    with Transaction() as tx:          # stage
        num = reals.acquire(addr, flags, tx)
        tx.update(bpf_map, key, value)  # kernel write, its undo recorded
        ...
    # commit on success; on any exception every step is undone in reverse, then re-raised

Registry changes and kernel writes share the one undo list, so a ``KernelError`` in
the middle leaves both the maps and the Python state as they were.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Callable, Iterator, Optional

import attrs

from .errors import CapacityError, KatranError, KernelError
from .models import IPAddress


class Transaction:
    """An undo list.  ``with Transaction() as tx`` commits on success, rolls back on error.

    ``on_failed_write`` is called for every kernel write that raised (KatranLb counts them);
    ``on_commit`` once the transaction committed (KatranLb: the state file is due).
    """

    def __init__(self, on_failed_write: Optional[Callable[[], None]] = None,
                 on_commit: Optional[Callable[[], None]] = None) -> None:
        self._undo: list[Callable[[], None]] = []
        self._deferred: list[Callable[[], None]] = []
        self._done = False
        self._on_failed_write = on_failed_write
        self._on_commit = on_commit
        self.undo_errors: list[BaseException] = []

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
            else:
                self.rollback()
                if self.undo_errors and isinstance(exc, BaseException):
                    exc.add_note(f"rollback incomplete: {'; '.join(str(e) for e in self.undo_errors)}")
        finally:
            while self._deferred:
                self._deferred.pop()()

    def defer(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the transaction ends, committed or not (e.g. close a handle)."""
        self._deferred.append(fn)

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Register the inverse of a step that was just done."""
        if self._done:
            raise KatranError("transaction already finished")
        self._undo.append(undo)

    def commit(self) -> None:
        self._undo.clear()
        self._done = True
        if self._on_commit is not None:
            self._on_commit()

    @contextlib.contextmanager
    def savepoint(self) -> Iterator["Transaction"]:
        """A step inside the transaction that fails alone: on error, undo only what the
        body did (newest first) and re-raise; on success its undo steps stay with the
        transaction (a later failure undoes them too)."""
        mark = len(self._undo)
        try:
            yield self
        except BaseException:
            while len(self._undo) > mark:
                step = self._undo.pop()
                try:
                    step()
                except Exception as e:
                    self.undo_errors.append(e)
            raise

    def rollback(self) -> None:
        """Undo every step in reverse; undo failures are collected, not raised."""
        while self._undo:
            step = self._undo.pop()
            try:
                step()
            except Exception as e:  # keep undoing the rest
                self.undo_errors.append(e)
        self._done = True

    # kernel writes with their undo ---------------------------------------------
    def _write(self, fn: Callable[[], object]):
        try:
            return fn()
        except KernelError:
            if self._on_failed_write is not None:
                self._on_failed_write()
            raise

    def update(self, bpf_map, key: bytes, value, *, old=None, known_old: bool = False) -> None:
        """``bpf_map[key] = value``; undo restores the previous value (or deletes the key).

        ``known_old=True``: the caller knows the previous value (``old``, None = absent),
        which saves the lookup.
        """
        if not known_old:
            old = bpf_map.lookup(key)
        self._write(lambda: bpf_map.update(key, value))
        self.on_rollback(lambda: bpf_map.update(key, old) if old is not None else bpf_map.delete(key))

    def delete(self, bpf_map, key: bytes, *, old=None, known_old: bool = False) -> bool:
        """Delete ``key``; undo writes the previous value back (``known_old``: see update)."""
        if not known_old:
            old = bpf_map.lookup(key)
        if old is None:
            return False
        self._write(lambda: bpf_map.delete(key))
        self.on_rollback(lambda: bpf_map.update(key, old))
        return True

    def update_batch(self, bpf_map, keys: bytes, values: bytes, old_values: bytes) -> None:
        """Batch write; undo writes ``old_values`` to the same keys (a failed batch may be partial)."""
        self.on_rollback(lambda: bpf_map.update_batch(keys, old_values))
        self._write(lambda: bpf_map.update_batch(keys, values))

    def update_view(self, bpf_map, index, values, old_values, dtype="<u4") -> None:
        """``index``-ed slots of an mmap-able array written through its mapped values
        (``bpf_map.value_view(dtype)[index] = values``, no syscall); undo writes
        ``old_values`` back to the same slots (also after a partial write)."""
        view = self._write(lambda: bpf_map.value_view(dtype))

        def undo() -> None:
            view[index] = old_values

        self.on_rollback(undo)
        self._write(lambda: view.__setitem__(index, values))

    def call(self, do: Callable[[], object], undo: Callable[[], None]):
        """Any other kernel step and its inverse."""
        result = self._write(do)
        self.on_rollback(undo)
        return result


@attrs.define
class RealEntry:
    num: int
    refcount: int
    flags: int


class RealRegistry:
    """Real index allocation (1..max_reals-1; 0 is "no real"), refcounts, address <-> index."""

    def __init__(self, max_reals: int) -> None:
        self.max_reals = max_reals
        self._by_addr: dict[IPAddress, RealEntry] = {}
        self._by_num: dict[int, IPAddress] = {}
        self._free = collections.deque(range(1, max_reals))

    # queries
    def __contains__(self, addr: object) -> bool:
        return addr in self._by_addr

    def __len__(self) -> int:
        return len(self._by_addr)

    def __iter__(self) -> Iterator[IPAddress]:
        return iter(self._by_addr)

    def get(self, addr: IPAddress) -> Optional[RealEntry]:
        return self._by_addr.get(addr)

    def address(self, num: int) -> IPAddress:
        return self._by_num[num]

    def address_or_none(self, num: int) -> Optional[IPAddress]:
        return self._by_num.get(num)

    @property
    def free_count(self) -> int:
        return len(self._free)

    def next_free(self) -> int:
        if not self._free:
            raise CapacityError(f"no free real slots (max_reals={self.max_reals})")
        return self._free[0]

    def check_capacity(self, addrs, what: str) -> None:
        """CapacityError unless every new address in ``addrs`` can get an index."""
        new = {a for a in addrs if a not in self._by_addr}
        if len(new) > len(self._free):
            raise CapacityError(f"{what}: {len(new)} new reals but only {len(self._free)} free real slots "
                                f"(max_reals={self.max_reals})")

    def entries(self) -> list[tuple[IPAddress, RealEntry]]:
        return list(self._by_addr.items())

    @classmethod
    def restored(cls, max_reals: int, entries) -> "RealRegistry":
        """A registry holding ``entries`` [(address, RealEntry)] (free indices ascending)."""
        reg = cls(max_reals)
        for addr, entry in entries:
            if not 1 <= entry.num < max_reals or entry.num in reg._by_num or addr in reg._by_addr:
                raise KatranError(f"real {addr}: index {entry.num} is out of range or used twice")
            reg._by_addr[addr] = entry
            reg._by_num[entry.num] = addr
        reg._free = collections.deque(n for n in range(1, max_reals) if n not in reg._by_num)
        return reg

    # staged changes
    def acquire(self, addr: IPAddress, flags: int, tx: Transaction) -> tuple[int, bool]:
        """One more reference to ``addr`` -> (index, newly allocated)."""
        entry = self._by_addr.get(addr)
        if entry is not None:
            entry.refcount += 1
            tx.on_rollback(lambda: setattr(entry, "refcount", entry.refcount - 1))
            return entry.num, False
        num = self.next_free()
        self._free.popleft()
        self._by_addr[addr] = RealEntry(num, 1, flags)
        self._by_num[num] = addr

        def undo() -> None:
            del self._by_addr[addr]
            del self._by_num[num]
            self._free.appendleft(num)

        tx.on_rollback(undo)
        return num, True

    def release(self, num: int, tx: Transaction) -> bool:
        """One reference less; True when the index became free."""
        addr = self._by_num[num]
        entry = self._by_addr[addr]
        entry.refcount -= 1
        if entry.refcount > 0:
            tx.on_rollback(lambda: setattr(entry, "refcount", entry.refcount + 1))
            return False
        del self._by_addr[addr]
        del self._by_num[num]
        self._free.append(num)

        def undo() -> None:
            self._free.remove(num)
            entry.refcount = 1
            self._by_addr[addr] = entry
            self._by_num[num] = addr

        tx.on_rollback(undo)
        return True

    def set_flags(self, addr: IPAddress, flags: int, tx: Transaction) -> None:
        entry = self._by_addr[addr]
        old = entry.flags
        entry.flags = flags
        tx.on_rollback(lambda: setattr(entry, "flags", old))


class SlotAllocator:
    """Numbers 0..n-1 (VIP numbers): lowest freed first in, like Katran's deque."""

    def __init__(self, n: int) -> None:
        self.size = n
        self._free = collections.deque(range(n))

    def __len__(self) -> int:
        return len(self._free)

    def restore_used(self, used) -> None:
        used = set(used)
        self._free = collections.deque(n for n in range(self.size) if n not in used)

    def take(self, tx: Transaction) -> int:
        num = self._free.popleft()
        tx.on_rollback(lambda: self._free.appendleft(num))
        return num

    def give_back(self, num: int, tx: Transaction) -> None:
        self._free.append(num)
        tx.on_rollback(lambda: self._free.remove(num))


def set_item(d: dict, key, value, tx: Transaction) -> None:
    """``d[key] = value``, undone by the transaction (order of an existing key kept)."""
    if key in d:
        old = d[key]
        d[key] = value
        tx.on_rollback(lambda: d.__setitem__(key, old))
    else:
        d[key] = value
        tx.on_rollback(lambda: d.pop(key))


def pop_item(d: dict, key, tx: Transaction):
    """``d.pop(key)`` undone by the transaction (the key goes back to its old position)."""
    items = list(d.items())
    value = d.pop(key)

    def undo() -> None:
        d.clear()
        d.update(items)

    tx.on_rollback(undo)
    return value
