"""Who may reach an RPC server: listen addresses, unix socket permissions,
bearer tokens and the TCP policy both servers share (docs/security.md).

* ``unix:PATH`` listeners (the default, under ``/run/katran/``): the socket is
  mode 0660, owner root (the server's user), group ``katran`` if that group
  exists; its directory, when we create it, 0750 with the same group.
* TCP listeners need TLS client certificates (``-tls_client_ca``) or a
  bearer token (``-token_file``) unless ``-insecure`` is given.
"""

from __future__ import annotations

import errno
import grp
import os
import socket
import stat
from typing import Optional, Tuple

from katran.errors import ValidationError

RUN_DIR = "/run/katran"
GROUP = "katran"
SOCKET_MODE = 0o660
DIR_MODE = 0o750
MAX_TOKEN_BYTES = 4096


def default_socket(name: str) -> str:
    """``unix:/run/katran/<name>.sock``."""
    return f"unix:{RUN_DIR}/{name}.sock"


def unix_path(address: str) -> Optional[str]:
    """The path of a ``unix:PATH`` / ``unix://PATH`` address, else None."""
    if address.startswith("unix://"):
        return address[len("unix://"):]
    if address.startswith("unix:"):
        return address[len("unix:"):]
    return None


def split_host_port(text: str, field: str = "server") -> Tuple[str, int]:
    """'host:port', '[v6]:port' or ':port' -> (host, port); ValidationError otherwise."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValidationError(field, text, "expected host:port or unix:PATH")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def socket_group() -> Optional[int]:
    """The gid of the ``katran`` group, or None if there is none."""
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        return None


def prepare_unix_socket(path: str) -> None:
    """Make the socket's directory (0750, group katran) if missing and remove a
    stale socket file; raises ValidationError if the path is in use or not a socket."""
    if not path or "\0" in path:
        raise ValidationError("server", path, "empty or invalid unix socket path")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
        gid = socket_group()
        if gid is not None:
            os.chown(directory, -1, gid)
        os.chmod(directory, DIR_MODE)  # not subject to the umask
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ValidationError("server", path, "exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)  # left behind by a server that is gone
            return
        raise ValidationError("server", path, f"cannot check the existing socket: {exc.strerror}") from None
    finally:
        probe.close()
    raise ValidationError("server", path, "in use: another server listens on it")


def secure_unix_socket(path: str) -> None:
    """Mode 0660, owner the server's user, group katran (if it exists)."""
    gid = socket_group()
    os.chown(path, os.geteuid(), gid if gid is not None else os.getegid())
    os.chmod(path, SOCKET_MODE)


def read_token(path: str, field: str = "token_file") -> bytes:
    """The bearer token in ``path`` (surrounding whitespace stripped).

    Refused: unreadable, empty, not printable ASCII, larger than 4 KiB, or
    readable/writable by every user (a secret anyone can read protects nothing).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ValidationError(field, path, f"cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
            raise ValidationError(field, path, f"mode {stat.S_IMODE(st.st_mode):04o} lets every user read or "
                                               "write the token (chmod 600 or 640)")
        data = os.read(fd, MAX_TOKEN_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_BYTES:
        raise ValidationError(field, path, f"token longer than {MAX_TOKEN_BYTES} bytes")
    token = data.strip()
    if not token:
        raise ValidationError(field, path, "the file holds no token")
    if not all(0x21 <= b <= 0x7E for b in token):
        raise ValidationError(field, path, "the token must be printable ASCII without spaces")
    return token


def token_from_file(path: str) -> Optional[bytes]:
    """A client's bearer token from ``path`` (-token_file), None without a path."""
    return read_token(path) if path else None


def check_tcp_policy(address: str, *, client_ca: str, token_file: str, insecure: bool) -> None:
    """A TCP listener must authenticate its clients unless -insecure."""
    if unix_path(address) is not None or insecure or client_ca or token_file:
        return
    raise ValidationError(
        "server", address,
        "a TCP listener must authenticate its clients: give -tls_client_ca (with -tls_cert/-tls_key) or "
        "-token_file, or -insecure to let anyone who can reach the port reconfigure the balancer")


# ---------------------------------------------------------------- server flags
# (names shared by both servers; the limits' defaults are those of
# katran_grpc.server.GrpcLimits and katran_thrift.transport.ServerLimits)
def add_transport_flags(fs, kind: str) -> None:
    """Listener security and limits flags of katran-server-<kind> (kind: grpc or thrift)."""
    fs.string("tls_cert", "", "PEM server certificate (enables TLS; needs -tls_key)")
    fs.string("tls_key", "", "PEM private key of -tls_cert")
    fs.string("tls_client_ca", "", "PEM CA bundle: require client certificates signed by it (mTLS)")
    fs.string("token_file", "", "file (mode 0600/0640) holding a bearer token TCP clients must send "
              "(gRPC metadata / THeader header 'authorization: Bearer <token>')")
    fs.bool("insecure", False, "allow a TCP listener without client certificates or token: anyone who can "
            "reach the port can reconfigure the balancer")
    fs.int("workers", 8, "threads running RPCs")
    fs.int("max_message_size", 4 << 20, "largest request in bytes (thrift: frame or unframed message)")
    fs.int("max_connections", 256, "connections open at once; more are closed at once")
    fs.float("idle_timeout", 300.0, "seconds a connection may stay without a request before it is closed")
    if kind == "grpc":
        fs.int("max_concurrent_rpcs", 64, "RPCs running or queued at once; more are refused (RESOURCE_EXHAUSTED)")
        fs.int("max_concurrent_streams", 16, "concurrent RPCs per connection (HTTP/2 streams)")
        fs.float("keepalive_time", 60.0, "seconds between keepalive pings to a quiet client")
        fs.float("keepalive_timeout", 20.0, "seconds to wait for a keepalive ping's answer before closing")
    else:
        fs.int("max_string_size", 1 << 16, "largest string or binary field in bytes")
        fs.int("max_container_size", 1 << 16, "most elements in one list, set or map")
        fs.float("read_timeout", 10.0, "seconds a started request (or TLS handshake) may take to arrive")


_GRPC_LIMIT_FLAGS = ("workers", "max_message_size", "max_connections", "idle_timeout", "max_concurrent_rpcs",
                     "max_concurrent_streams", "keepalive_time", "keepalive_timeout")
_THRIFT_LIMIT_FLAGS = ("workers", "max_message_size", "max_connections", "idle_timeout", "max_string_size",
                       "max_container_size", "read_timeout")


def limits_from_flags(ns, cls, kind: str):
    """``cls`` (GrpcLimits / ServerLimits) from the parsed flags; ValidationError names the flag."""
    names = _GRPC_LIMIT_FLAGS if kind == "grpc" else _THRIFT_LIMIT_FLAGS
    values = {name: getattr(ns, name) for name in names}
    for name, value in values.items():
        if not value > 0:
            raise ValidationError(name, value, "must be positive")
    return cls(**values)


def token_from_flags(ns) -> Optional[bytes]:
    """Apply the TCP policy to -server; the token of -token_file (None without one)."""
    check_tcp_policy(ns.server, client_ca=ns.tls_client_ca, token_file=ns.token_file, insecure=ns.insecure)
    return read_token(ns.token_file) if ns.token_file else None
