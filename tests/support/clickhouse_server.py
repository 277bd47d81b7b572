"""A real ClickHouse server (the Debian 18.16 package) run as a child process for tests.

The embedded engine (chDB) runs a current ClickHouse; production may run the old server that
Debian ships. Tests that must prove the SQL works on both start this class: a private config,
data dir and ports per instance, so several servers (e.g. two shards of one cluster) can run
at once and nothing touches /var/lib/clickhouse or the default ports.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

DEFAULT_BINARY = Path("/usr/sbin/clickhouse-server")
DEFAULT_CONFIG_DIR = Path("/etc/clickhouse-server")
HOST = "127.0.0.1"

# cluster name -> shards -> replicas (host, tcp port)
ClusterSpec = Mapping[str, Sequence[Sequence[tuple[str, int]]]]
# an XML fragment (the children of <remote_servers>, or the whole element) or a ClusterSpec
RemoteServers = str | ClusterSpec

# Listeners a test server must not open: they would need certificates or fixed ports.
_UNWANTED_PORTS = (
    "https_port",
    "tcp_port_secure",
    "interserver_https_port",
    "mysql_port",
    "postgresql_port",
    "grpc_port",
)
_PR_SET_PDEATHSIG = 1


class ClickHouseServerError(RuntimeError):
    """The server could not be started or did not answer in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(host: str, port: int) -> bool:
    """Whether something accepts TCP connections there; cheaper and quieter than a driver call."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _bindable(host: str, port: int) -> bool:
    """Whether a listener could bind there now (SO_REUSEADDR, as the server does, so
    TIME_WAIT leftovers of closed connections do not count as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def remote_servers_xml(clusters: ClusterSpec) -> str:
    """The children of <remote_servers> for the given clusters (cluster -> shards -> replicas)."""
    root = ET.Element("remote_servers")
    for name, shards in clusters.items():
        cluster = ET.SubElement(root, name)
        for replicas in shards:
            if not replicas:
                raise ValueError(f"cluster {name!r} has a shard without replicas")
            shard = ET.SubElement(cluster, "shard")
            ET.SubElement(shard, "internal_replication").text = "false"
            for host, port in replicas:
                replica = ET.SubElement(shard, "replica")
                ET.SubElement(replica, "host").text = host
                ET.SubElement(replica, "port").text = str(port)
    return "".join(ET.tostring(child, encoding="unicode") for child in root)


def _parse_remote_servers(remote_servers: RemoteServers) -> list[ET.Element]:
    """The cluster elements to put under <remote_servers>."""
    xml = remote_servers if isinstance(remote_servers, str) else remote_servers_xml(remote_servers)
    xml = xml.strip()
    try:
        parsed = ET.fromstring(xml if xml.startswith("<remote_servers") else f"<r>{xml}</r>")
    except ET.ParseError as exc:
        raise ValueError(f"remote_servers is not valid XML: {exc}") from exc
    return list(parsed)


def _set(root: ET.Element, tag: str, value: str) -> None:
    """Set (or add) a direct child of the config root."""
    node = root.find(tag)
    if node is None:
        node = ET.SubElement(root, tag)
    node.text = value


def _strip_includes(root: ET.Element) -> None:
    """Drop `incl` substitutions so nothing from /etc/metrika.xml leaks into a test server."""
    for node in root.iter():
        node.attrib.pop("incl", None)


def _pdeathsig() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGKILL the server when the starting thread dies.

    It keeps a crashed or SIGKILLed test run from leaving servers behind. libc is loaded here,
    in the parent, so the child only makes one system call between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    return hook


class _Handle:
    """What the finalizer needs; kept apart from the server so it does not keep it alive."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_dir: Path | None = None
        self.keep_dir = False


def _cleanup(handle: _Handle) -> None:
    """Last resort at garbage collection or interpreter exit: kill the server, remove its dir."""
    if handle.proc is not None and handle.proc.poll() is None:
        handle.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            handle.proc.wait(timeout=10)
    if handle.base_dir is not None and not handle.keep_dir:
        shutil.rmtree(handle.base_dir, ignore_errors=True)


class ClickHouseServer:
    """One clickhouse-server process with its own temp dir and ports, listening on 127.0.0.1.

    Ports are chosen at construction, so cluster definitions naming several servers can be
    built before any of them starts. Ports chosen here may still move if another process takes
    one before the first start; a server named in a cluster should get its ports passed in
    (``tcp_port=free_port()``), which never move. The temp dir holds config.xml, users.xml, data/ and logs/;
    it survives kill() and restart() (that is what crash tests need) and is removed by stop()
    unless ``keep_dir`` is set.
    """

    def __init__(
        self,
        *,
        binary: str | os.PathLike[str] = DEFAULT_BINARY,
        config_dir: str | os.PathLike[str] = DEFAULT_CONFIG_DIR,
        tcp_port: int | None = None,
        http_port: int | None = None,
        interserver_port: int | None = None,
        remote_servers: RemoteServers | None = None,
        timezone: str | None = "UTC",
        log_level: str = "warning",
        keep_dir: bool = False,
        start_timeout: float = 60.0,
        die_with_parent: bool = True,
    ) -> None:
        """Prepare, but do not start, a server.

        ``timezone`` defaults to UTC so DateTime results do not depend on the machine; pass
        None to keep the system zone. ``die_with_parent`` kills the server if the thread that
        started it exits, so start it from a thread that outlives it (pytest's main thread).
        """
        self.binary = Path(binary)
        self.config_dir = Path(config_dir)
        self.remote_servers = remote_servers
        self.timezone = timezone
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self._ports_fixed = tcp_port is not None or http_port is not None or interserver_port is not None
        self._tcp_port = tcp_port or free_port()
        self._http_port = http_port or free_port()
        self._interserver_port = interserver_port or free_port()
        self._handle = _Handle()
        self._handle.keep_dir = keep_dir
        self._finalizer = weakref.finalize(self, _cleanup, self._handle)

    # -- properties ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def tcp_port(self) -> int:
        return self._tcp_port

    @property
    def http_port(self) -> int:
        return self._http_port

    @property
    def interserver_port(self) -> int:
        return self._interserver_port

    @property
    def url(self) -> str:
        """Native-protocol URL of the default database, as clickhouse-driver reads it."""
        return self.url_for("default")

    def url_for(self, database: str) -> str:
        return f"clickhouse://default:@{HOST}:{self._tcp_port}/{database}"

    @property
    def keep_dir(self) -> bool:
        return self._handle.keep_dir

    @keep_dir.setter
    def keep_dir(self, value: bool) -> None:
        self._handle.keep_dir = value

    @property
    def base_dir(self) -> Path:
        """The temp dir holding config, data and logs (created on first start)."""
        if self._handle.base_dir is None:
            raise ClickHouseServerError("the server has not been started")
        return self._handle.base_dir

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_dir(self) -> Path:
        return self.base_dir / "logs"

    @property
    def config_path(self) -> Path:
        return self.base_dir / "config.xml"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else None."""
        proc = self._handle.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> None:
        """Start on this instance's dir and ports; with ``wait``, return once SELECT 1 answers.

        ``wait=False`` lets several servers boot at the same time; call wait_ready() after.
        When the ports were chosen here and another process took one first, new ports are
        chosen and the start is retried (only before the first successful start).
        """
        if self.running:
            raise ClickHouseServerError(f"the server is already running (pid {self.pid})")
        if not self.binary.exists():
            raise ClickHouseServerError(
                f"{self.binary} not found: install it with scripts/install_clickhouse.sh"
            )
        first_start = self._handle.base_dir is None
        self._claim_ports(may_move=first_start and not self._ports_fixed)
        if first_start:
            self._handle.base_dir = Path(tempfile.mkdtemp(prefix="clickhouse-test-"))
        self._write_config()
        self._spawn()
        if not wait:
            return
        attempts = 3 if first_start and not self._ports_fixed else 1
        for attempt in range(attempts):
            try:
                self.wait_ready()
                return
            except ClickHouseServerError:
                if attempt + 1 == attempts or self.running or not self._port_clash():
                    raise
            self._tcp_port, self._http_port, self._interserver_port = free_port(), free_port(), free_port()
            for log in self.log_dir.glob("*.log"):
                log.write_bytes(b"")  # so the next failure is judged on its own messages
            self._write_config()
            self._spawn()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the server answers SELECT 1 over the native protocol.

        Raises ClickHouseServerError with the tail of the err log when the process exits or
        the timeout passes; on a timeout the process is killed so nothing is left behind.
        """
        from clickhouse_driver import Client

        proc = self._handle.proc
        if proc is None:
            raise ClickHouseServerError("the server has not been started")
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                raise ClickHouseServerError(
                    f"clickhouse-server exited with code {code} during start-up\n{self._log_tails()}"
                )
            if not _accepts(HOST, self._tcp_port):
                time.sleep(0.05)
                continue
            client = Client(HOST, port=self._tcp_port, connect_timeout=1, send_receive_timeout=2)
            try:
                if client.execute("SELECT 1") == [(1,)]:
                    return
            except Exception as exc:  # connection refused or server still starting
                last_error = exc
            finally:
                client.disconnect()
            time.sleep(0.1)
        self._terminate(signal.SIGKILL, timeout=10)
        waited = self.start_timeout if timeout is None else timeout
        raise ClickHouseServerError(
            f"clickhouse-server on port {self._tcp_port} did not answer SELECT 1 within {waited:.0f} s "
            f"(last error: {last_error!r})\n{self._log_tails()}"
        )

    def stop(self, timeout: float = 30.0, *, keep_dir: bool | None = None) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout``), then remove the temp dir.

        Safe to call when not running: it still removes the dir, so `kill(); stop()` cleans up.
        """
        self._terminate(signal.SIGTERM, timeout=timeout)
        keep = self._handle.keep_dir if keep_dir is None else keep_dir
        if not keep and self._handle.base_dir is not None:
            shutil.rmtree(self._handle.base_dir, ignore_errors=True)
            self._handle.base_dir = None

    def kill(self) -> None:
        """SIGKILL at once and reap it: a crash, with data and dir left as they were."""
        self._terminate(signal.SIGKILL, timeout=30.0)

    def restart(self, *, wait: bool = True) -> None:
        """Stop gracefully if running, then start again on the same data dir and ports."""
        if self.running:
            self.stop(keep_dir=True)
        self.start(wait=wait)

    def client(self, database: str = "default", **settings: Any) -> Any:
        """A clickhouse_driver.Client for this server (the caller disconnects it)."""
        from clickhouse_driver import Client

        return Client(HOST, port=self._tcp_port, database=database, settings=settings or None)

    def err_log_tail(self, lines: int = 40) -> str:
        """Last lines of the server's error log, for failure messages."""
        return self._tail(self.log_dir / "clickhouse-server.err.log", lines)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ClickHouseServer(tcp_port={self._tcp_port}, pid={self.pid})"

    # -- internals ----------------------------------------------------------------------------

    def _write_config(self) -> None:
        """Copy the packaged config and users files with every path and port made private."""
        base = self.base_dir
        data, logs = base / "data", base / "logs"
        for sub in (data, data / "tmp", data / "user_files", data / "format_schemas", logs):
            sub.mkdir(parents=True, exist_ok=True)
        (base / "metrika.xml").write_text('<?xml version="1.0"?>\n<yandex/>\n')

        root = ET.parse(self.config_dir / "config.xml").getroot()
        _strip_includes(root)
        _set(root, "include_from", str(base / "metrika.xml"))
        _set(root, "path", f"{data}/")
        _set(root, "tmp_path", f"{data / 'tmp'}/")
        _set(root, "user_files_path", f"{data / 'user_files'}/")
        _set(root, "format_schema_path", f"{data / 'format_schemas'}/")
        _set(root, "users_config", str(base / "users.xml"))
        _set(root, "tcp_port", str(self._tcp_port))
        _set(root, "http_port", str(self._http_port))
        _set(root, "interserver_http_port", str(self._interserver_port))
        _set(root, "interserver_http_host", HOST)
        for tag in _UNWANTED_PORTS:
            for node in root.findall(tag):
                root.remove(node)
        # Only IPv4 loopback: a machine without IPv6 must still start, and nothing is exposed.
        for node in root.findall("listen_host"):
            root.remove(node)
        _set(root, "listen_host", HOST)
        _set(root, "listen_try", "0")
        # No ZooKeeper: drop the optional sections that would otherwise stay as empty elements.
        for tag in ("zookeeper", "macros"):
            for node in root.findall(tag):
                if len(node) == 0:
                    root.remove(node)
        if self.timezone is not None:
            _set(root, "timezone", self.timezone)

        logger = root.find("logger")
        if logger is None:
            logger = ET.SubElement(root, "logger")
        _set(logger, "level", self.log_level)
        _set(logger, "log", str(logs / "clickhouse-server.log"))
        _set(logger, "errorlog", str(logs / "clickhouse-server.err.log"))
        _set(logger, "console", "0")

        remote = root.find("remote_servers")
        if remote is None:
            remote = ET.SubElement(root, "remote_servers")
        for child in list(remote):
            remote.remove(child)  # the packaged test clusters point at port 9000
        if self.remote_servers is not None:
            remote.extend(_parse_remote_servers(self.remote_servers))

        ET.ElementTree(root).write(base / "config.xml", encoding="utf-8", xml_declaration=True)

        users = ET.parse(self.config_dir / "users.xml").getroot()
        _strip_includes(users)
        # An idle connection notices shutdown only every poll_interval seconds (default 10):
        # with 1 s, stop() does not stall on a client a test left open.
        default_profile = users.find("profiles/default")
        if default_profile is not None:
            _set(default_profile, "poll_interval", "1")
        _set(users, "include_from", str(base / "metrika.xml"))
        ET.ElementTree(users).write(base / "users.xml", encoding="utf-8", xml_declaration=True)

    def _spawn(self) -> None:
        """Launch the binary; stdout and stderr go to logs/stdout.log (it prints little)."""
        base = self.base_dir
        with (base / "logs" / "stdout.log").open("ab") as out:
            self._handle.proc = subprocess.Popen(
                [str(self.binary), f"--config-file={base / 'config.xml'}"],
                cwd=base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the tests, not the server
                preexec_fn=_pdeathsig() if self.die_with_parent else None,  # noqa: PLW1509
            )

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        """Send ``sig``, wait up to ``timeout``, SIGKILL if still alive, and reap."""
        proc = self._handle.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        self._handle.proc = None

    def _claim_ports(self, *, may_move: bool) -> None:
        """Fail fast (or pick new ports) when a port is taken, instead of a server exiting later."""
        for _ in range(5):
            ports = (self._tcp_port, self._http_port, self._interserver_port)
            busy = [port for port in ports if not _bindable(HOST, port)]
            if not busy:
                return
            if not may_move:
                raise ClickHouseServerError(f"port(s) {busy} on {HOST} already in use")
            self._tcp_port, self._http_port, self._interserver_port = free_port(), free_port(), free_port()
        raise ClickHouseServerError("could not find three free ports")

    def _port_clash(self) -> bool:
        return "Address already in use" in self._log_tails()

    def _log_tails(self) -> str:
        if self._handle.base_dir is None:
            return ""
        return (
            f"--- {self.log_dir / 'clickhouse-server.err.log'} (tail) ---\n{self.err_log_tail()}\n"
            f"--- {self.log_dir / 'stdout.log'} (tail) ---\n{self._tail(self.log_dir / 'stdout.log', 20)}"
        )

    @staticmethod
    def _tail(path: Path, lines: int) -> str:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return "(missing)"
        return "\n".join(text.splitlines()[-lines:])
