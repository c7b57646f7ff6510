"""cffi (ABI mode) bindings to the subset of libbpf 1.1 used by katran.

Only declarations live here, plus two small helpers: ``check`` (negative errno ->
``KernelError``) and the print callback that keeps libbpf's messages (including the
verifier log of a failed load) in a ring buffer instead of spilling them on stderr.
"""

from __future__ import annotations

import collections
import logging
import threading

import cffi

from katran.errors import BuildError, KernelError

ffi = cffi.FFI()

ffi.cdef(
    r"""
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
typedef int32_t __s32;
typedef int64_t __s64;

struct bpf_object;
struct bpf_map;
struct bpf_program;
struct btf;
struct btf_ext;

enum libbpf_print_level { LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG };
/* va_list is unknown to cffi; as a parameter it is a pointer on x86_64/arm64 */
typedef int (*libbpf_print_fn_t)(enum libbpf_print_level level, const char *fmt, void *ap);
libbpf_print_fn_t libbpf_set_print(libbpf_print_fn_t fn);
int libbpf_strerror(int err, char *buf, size_t size);
int libbpf_num_possible_cpus(void);
int vsnprintf(char *buf, size_t n, const char *fmt, void *ap);
int setns(int fd, int nstype);
int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const void *data);

struct bpf_object_open_opts {
    size_t sz;
    const char *object_name;
    bool relaxed_maps;
    const char *pin_root_path;
    __u32 _unused_attach_prog_fd;
    const char *kconfig;
    const char *btf_custom_path;
    char *kernel_log_buf;
    size_t kernel_log_size;
    __u32 kernel_log_level;
};

struct bpf_object *bpf_object__open_file(const char *path, const struct bpf_object_open_opts *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
const char *bpf_object__name(const struct bpf_object *obj);
struct btf *bpf_object__btf(const struct bpf_object *obj);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);
struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);
struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj, const char *name);

const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__type(const struct bpf_map *map);
int bpf_map__set_type(struct bpf_map *map, int type);
__u32 bpf_map__key_size(const struct bpf_map *map);
__u32 bpf_map__value_size(const struct bpf_map *map);
__u32 bpf_map__max_entries(const struct bpf_map *map);
int bpf_map__set_max_entries(struct bpf_map *map, __u32 max_entries);
__u32 bpf_map__map_flags(const struct bpf_map *map);
int bpf_map__set_map_flags(struct bpf_map *map, __u32 flags);
int bpf_map__set_numa_node(struct bpf_map *map, __u32 numa_node);
bool bpf_map__is_internal(const struct bpf_map *map);
struct bpf_map *bpf_map__inner_map(struct bpf_map *map);
int bpf_map__set_inner_map_fd(struct bpf_map *map, int fd);
const void *bpf_map__initial_value(struct bpf_map *map, size_t *psize);
int bpf_map__set_initial_value(struct bpf_map *map, const void *data, size_t size);
int bpf_map__reuse_fd(struct bpf_map *map, int fd);
int bpf_map__set_pin_path(struct bpf_map *map, const char *path);

const char *bpf_program__name(const struct bpf_program *prog);
const char *bpf_program__section_name(const struct bpf_program *prog);
int bpf_program__fd(const struct bpf_program *prog);
int bpf_program__type(const struct bpf_program *prog);
int bpf_program__set_type(struct bpf_program *prog, int type);
int bpf_program__set_autoload(struct bpf_program *prog, bool autoload);
int bpf_program__set_expected_attach_type(struct bpf_program *prog, int type);

struct bpf_map_create_opts {
    size_t sz;
    __u32 btf_fd;
    __u32 btf_key_type_id;
    __u32 btf_value_type_id;
    __u32 btf_vmlinux_value_type_id;
    __u32 inner_map_fd;
    __u32 map_flags;
    __u64 map_extra;
    __u32 numa_node;
    __u32 map_ifindex;
};
int bpf_map_create(int map_type, const char *map_name, __u32 key_size, __u32 value_size,
                   __u32 max_entries, const struct bpf_map_create_opts *opts);
int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);

struct bpf_map_batch_opts {
    size_t sz;
    __u64 elem_flags;
    __u64 flags;
};
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
                         __u32 *count, const struct bpf_map_batch_opts *opts);
int bpf_map_update_batch(int fd, const void *keys, const void *values, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_delete_batch(int fd, const void *keys, __u32 *count,
                         const struct bpf_map_batch_opts *opts);

int bpf_obj_pin(int fd, const char *pathname);
int bpf_obj_get(const char *pathname);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len);
int bpf_prog_get_fd_by_id(__u32 id);
int bpf_map_get_fd_by_id(__u32 id);

/* leading part of the uapi info structs; the kernel accepts a shorter info_len */
struct bpf_map_info {
    __u32 type;
    __u32 id;
    __u32 key_size;
    __u32 value_size;
    __u32 max_entries;
    __u32 map_flags;
    char name[16];
};
struct bpf_prog_info {
    __u32 type;
    __u32 id;
    __u8 tag[8];
    __u32 jited_prog_len;
    __u32 xlated_prog_len;
    __u64 jited_prog_insns;
    __u64 xlated_prog_insns;
    __u64 load_time;
    __u32 created_by_uid;
    __u32 nr_map_ids;
    __u64 map_ids;
    char name[16];
};

struct bpf_test_run_opts {
    size_t sz;
    const void *data_in;
    void *data_out;
    __u32 data_size_in;
    __u32 data_size_out;
    const void *ctx_in;
    void *ctx_out;
    __u32 ctx_size_in;
    __u32 ctx_size_out;
    __u32 retval;
    int repeat;
    __u32 duration;
    __u32 flags;
    __u32 cpu;
    __u32 batch_size;
};
int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);

struct xdp_md {
    __u32 data;
    __u32 data_end;
    __u32 data_meta;
    __u32 ingress_ifindex;
    __u32 rx_queue_index;
    __u32 egress_ifindex;
};

struct bpf_xdp_attach_opts {
    size_t sz;
    int old_prog_fd;
};
int bpf_xdp_attach(int ifindex, int prog_fd, __u32 flags, const struct bpf_xdp_attach_opts *opts);
int bpf_xdp_detach(int ifindex, __u32 flags, const struct bpf_xdp_attach_opts *opts);
int bpf_xdp_query_id(int ifindex, int flags, __u32 *prog_id);

/* BPF ring buffers (BPF_MAP_TYPE_RINGBUF): the consumer side */
struct ring_buffer;
typedef int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size);
struct ring_buffer_opts {
    size_t sz;
};
struct ring_buffer *ring_buffer__new(int map_fd, ring_buffer_sample_fn sample_cb, void *ctx,
                                     const struct ring_buffer_opts *opts);
void ring_buffer__free(struct ring_buffer *rb);
int ring_buffer__poll(struct ring_buffer *rb, int timeout_ms);
int ring_buffer__consume(struct ring_buffer *rb);
int ring_buffer__epoll_fd(const struct ring_buffer *rb);

struct btf_type {
    __u32 name_off;
    __u32 info;
    __u32 size_or_type;
};
struct btf_member {
    __u32 name_off;
    __u32 type;
    __u32 offset;
};
struct btf_var_secinfo {
    __u32 type;
    __u32 offset;
    __u32 size;
};
struct btf *btf__parse(const char *path, struct btf_ext **btf_ext);
void btf__free(struct btf *btf);
__u32 btf__type_cnt(const struct btf *btf);
const struct btf_type *btf__type_by_id(const struct btf *btf, __u32 id);
const char *btf__name_by_offset(const struct btf *btf, __u32 offset);
__s32 btf__find_by_name_kind(const struct btf *btf, const char *type_name, __u32 kind);
__s64 btf__resolve_size(const struct btf *btf, __u32 type_id);
int btf__resolve_type(const struct btf *btf, __u32 type_id);
"""
)


try:
    lib = ffi.dlopen("libbpf.so.1")
except OSError as exc:  # pragma: no cover - depends on the host
    raise BuildError(f"libbpf.so.1 not found ({exc}); install libbpf1 / libbpf-dev") from exc
libc = ffi.dlopen(None)

log = logging.getLogger("katran.libbpf")

# libbpf's messages, newest last; read by ``recent_messages`` for error details.
_messages: collections.deque[str] = collections.deque(maxlen=400)
_messages_lock = threading.Lock()
_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


@ffi.callback("libbpf_print_fn_t")
def _print_cb(level: int, fmt, ap) -> int:  # type: ignore[no-untyped-def]
    buf = ffi.new("char[]", 8192)
    n = libc.vsnprintf(buf, len(buf), fmt, ap)
    text = ffi.string(buf).decode("utf-8", "replace")
    if level <= 1:
        with _messages_lock:
            _messages.extend(text.rstrip("\n").split("\n"))
    if level == 0:
        log.debug("%s", text.rstrip("\n"))
    return n


lib.libbpf_set_print(_print_cb)


def clear_messages() -> None:
    with _messages_lock:
        _messages.clear()


def recent_messages(limit: int = 40) -> list[str]:
    """The last ``limit`` lines libbpf printed (warnings and info, incl. verifier logs)."""
    with _messages_lock:
        return list(_messages)[-limit:]


def errno_of(ret: int) -> int:
    """libbpf 1.x returns -errno from every int-returning call."""
    return -ret


def check(ret: int, operation: str, detail: str = "") -> int:
    """Return ``ret`` if >= 0, else raise ``KernelError(operation, errno)``."""
    if ret < 0:
        raise KernelError(operation, errno_of(ret), detail)
    return ret


def check_ptr(ptr, operation: str, detail: str = ""):  # type: ignore[no-untyped-def]
    """Return ``ptr`` unless NULL (libbpf then sets errno)."""
    if ptr == ffi.NULL:
        raise KernelError(operation, ffi.errno or 22, detail)
    return ptr


class Closing:
    """Context manager / finaliser plumbing around ``close()``."""

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
