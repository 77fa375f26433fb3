"""One node's configuration: typed defaults, filled from a file, ``DTWZ_*`` variables
and flags, in that order of precedence (flags win).

Defaults are safe: everything binds to loopback, and security is on. A TOML file holds the same keys
as the dataclass fields (``node_id = "n1"``, ``seeds = ["tcp://10.0.0.2:7100"]``);
environment variables are the upper-cased field names with the ``DTWZ_`` prefix
(``DTWZ_PEER_PORT=7101``, ``DTWZ_SEEDS=tcp://a:7100,tcp://b:7100``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtwz.errors import InvalidArgument


@dataclass
class NodeConfig:
    node_id: str = field(default_factory=lambda: socket.gethostname())
    data_dir: Path = Path("data/node")
    bind_host: str = "127.0.0.1"
    advertise_host: str = ""  # the name peers and clients use; bind_host if empty
    # the HTTP URL clients use, when it is not http://host:http_port (a published
    # container port, a proxy); other nodes pass it on to clients, never call it
    advertise_url: str = ""
    peer_port: int = 7100
    http_port: int = 7000
    seeds: list[str] = field(default_factory=list)
    heartbeat_interval: float = 0.25
    suspect_after: float = 1.0
    dead_after: float = 2.0
    request_timeout: float = 2.0
    directory_copies: int = 3
    durable: bool = True
    cluster_id: str = "dtwz"  # the cluster's identity: the root directory's ID derives from it
    # after fetching a copy on demand, fetch what its pointers lead to, up to this
    # many bytes, in the background (0: off)
    prefetch_neighbours: int = 0
    # signed requests, access checks and CurveZMQ between nodes (docs/SECURITY.md §9)
    security: bool = True
    # the cluster's keys folder, shared by its nodes (default: DATA_DIR/keys, which
    # suits a node on its own); whatever is missing is made on first start
    keys_dir: Path = Path("")
    # HTTP bodies (docs/SECURITY.md §9): at most this many received at once (more get
    # 503 with Retry-After); each may take body_timeout seconds and one more per MiB
    # received; request headers must come within header_timeout seconds (also how
    # long an idle kept-alive connection stays open)
    max_uploads: int = 16
    body_timeout: float = 30.0
    header_timeout: float = 60.0
    # enrollment and quotas (docs/SECURITY.md §10): whether any key may register
    # itself (every node alike), and per identity across the cluster at most this
    # many objects and allocated bytes, and at most this many enrolled keys (0: no limit)
    open_enrollment: bool = False
    quota_objects: int = 100_000
    quota_bytes: int = 10 << 30
    max_keys: int = 10_000
    # code at the data (docs/SECURITY.md §11): calls run at once (worker processes),
    # of which one caller's at most; the longest time limit a caller may ask for
    # (seconds of wall time; of CPU time too, unless code_cpu caps that lower); bytes
    # of memory per call (0: no limit); a root node's workers run as uids code_uid,
    # code_uid + 1, ... (one per worker); where a worker cannot be isolated, code is
    # refused unless allow_unisolated_code
    code_workers: int = 2
    code_per_caller: int = 1
    code_max_timeout: float = 300.0
    code_cpu: float = 0.0
    code_memory: int = 1 << 30
    code_uid: int = 61000
    allow_unisolated_code: bool = False

    @property
    def keys_folder(self) -> Path:
        return self.keys_dir if self.keys_dir != Path("") else self.data_dir / "keys"

    @property
    def host(self) -> str:
        return self.advertise_host or self.bind_host

    @property
    def peer_addr(self) -> str:
        return f"tcp://{self.host}:{self.peer_port}"

    @property
    def http_addr(self) -> str:
        return self.advertise_url or f"http://{self.host}:{self.http_port}"

    @property
    def http_url(self) -> str:
        """Where processes on this host reach the node's HTTP API (its code worker)."""
        host = self.bind_host if self.bind_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.http_port}"

    def validate(self) -> NodeConfig:
        if not self.node_id or len(self.node_id) > 64 or "/" in self.node_id:
            raise InvalidArgument(f"node_id must be 1-64 characters without '/': {self.node_id!r}")
        for port in (self.peer_port, self.http_port):
            if not 0 < port < 65536:
                raise InvalidArgument(f"port {port} out of range")
        if not 0 < self.heartbeat_interval < self.suspect_after <= self.dead_after:
            raise InvalidArgument("need 0 < heartbeat_interval < suspect_after <= dead_after")
        if self.directory_copies < 1 or self.request_timeout <= 0:
            raise InvalidArgument("directory_copies >= 1 and request_timeout > 0")
        if self.prefetch_neighbours < 0:
            raise InvalidArgument("prefetch_neighbours is a number of bytes, 0 for off")
        if self.max_uploads < 1 or self.body_timeout <= 0 or self.header_timeout <= 0:
            raise InvalidArgument("max_uploads >= 1, body_timeout > 0 and header_timeout > 0")
        if min(self.quota_objects, self.quota_bytes, self.max_keys) < 0:
            raise InvalidArgument("quota_objects, quota_bytes and max_keys are >= 0 (0: no limit)")
        if self.code_workers < 1 or not 1 <= self.code_per_caller <= self.code_workers:
            raise InvalidArgument("need code_workers >= 1 and 1 <= code_per_caller <= code_workers")
        if self.code_max_timeout <= 0 or min(self.code_cpu, self.code_memory) < 0:
            raise InvalidArgument("need code_max_timeout > 0, code_cpu >= 0, code_memory >= 0")
        if self.code_uid < 1:
            raise InvalidArgument("code_uid must be a uid above 0 (root's workers run as it)")
        if self.advertise_url and not self.advertise_url.startswith(("http://", "https://")):
            raise InvalidArgument(f"advertise_url must be http(s)://...: {self.advertise_url!r}")
        if not self.cluster_id or len(self.cluster_id) > 64:
            raise InvalidArgument(f"cluster_id must be 1-64 characters: {self.cluster_id!r}")
        return self

    @classmethod
    def load(
        cls,
        file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **flags: Any,
    ) -> NodeConfig:
        """Defaults, then the file, then ``DTWZ_*`` variables, then non-None flags."""
        values: dict[str, Any] = {}
        if file is not None:
            try:
                values.update(tomllib.loads(Path(file).read_text()))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise InvalidArgument(f"cannot read config file {file}: {exc}") from exc
        env = os.environ if env is None else env
        names = {f.name for f in dataclasses.fields(cls)}
        for name in names:
            raw = env.get("DTWZ_" + name.upper())
            if raw is not None:
                values[name] = raw
        values.update({k: v for k, v in flags.items() if v is not None})
        unknown = set(values) - names
        if unknown:
            raise InvalidArgument(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**{k: _coerce(cls, k, v) for k, v in values.items()}).validate()


def _coerce(cls: type, name: str, value: Any) -> Any:
    default = next(f for f in dataclasses.fields(cls) if f.name == name)
    sample = default.default if default.default is not dataclasses.MISSING else None
    if default.default_factory is not dataclasses.MISSING:
        sample = default.default_factory()
    try:
        if isinstance(sample, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(sample, int):
            return int(value)
        if isinstance(sample, float):
            return float(value)
        if isinstance(sample, Path):
            return Path(value)
        if isinstance(sample, list):
            if isinstance(value, str):
                return [s.strip() for s in value.split(",") if s.strip()]
            return list(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"config {name}: bad value {value!r}") from exc
