"""What katran's RPC frontends share, with no RPC library imported here.

* ``goflags``: Go-style command-line flags (the command lines of Katran's tools);
* ``server_flags``: the flags of both servers and their translation to a ``KatranConfig``;
* ``server``: one server lifecycle (parse, config, start ``KatranLb``, serve, signals, close)
  with a small transport-specific part (``katran_grpc.server``, ``katran_thrift.server``);
* ``client``: the ``KatranClient`` interface and its errors, which every transport implements;
* ``security``: listen addresses, unix socket permissions, bearer tokens, the TCP policy and the
  transport flags (limits) of both servers;
* ``cli``: katran-cli, with its transports registered by name and imported only when chosen.

``katran_grpc`` and ``katran_thrift`` build on this package and do not import each other;
nothing under ``katran/`` imports a frontend.
"""

# the servers' default listeners, and so the clients' defaults (docs/security.md)
GRPC_DEFAULT_SERVER = "unix:/run/katran/katran-grpc.sock"
THRIFT_DEFAULT_SERVER = "unix:/run/katran/katran-thrift.sock"

__all__ = ["GRPC_DEFAULT_SERVER", "THRIFT_DEFAULT_SERVER"]
