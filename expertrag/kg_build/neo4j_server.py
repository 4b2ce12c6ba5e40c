"""A local Neo4j Community server for tests, benchmarks and development, run from Maven-resolved jars.

``scripts/neo4j_setup.sh`` copies the jars of the version pinned in ``neo4j/pom.xml``
into ``.neo4j/lib``. ``Neo4jServer`` writes a throwaway home with its own
``conf/neo4j.conf``, starts ``org.neo4j.server.CommunityEntryPoint`` on a free
loopback port and waits until a ``RETURN 1`` query succeeds.

Run one by hand with ``python -m expertrag.kg_build.neo4j_server``; it prints the
Bolt URI and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from expertrag.errors import GraphStoreError

logger = logging.getLogger(__name__)

ENTRY_POINT = "org.neo4j.server.CommunityEntryPoint"
MIN_JAVA_MAJOR = 17
INITIAL_USER = "neo4j"
INITIAL_PASSWORD = "neo4j"
# Neo4j's dbms.security.auth_minimum_password_length defaults to 8.
MIN_PASSWORD_LENGTH = 8
JVM_FLAGS = [
    "-XX:+UseG1GC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Dfile.encoding=UTF-8",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
]


class Neo4jSetupError(GraphStoreError):
    """Java or the Neo4j jars are missing, so no local Neo4j server can start."""


def repository_root() -> Path:
    """Return the source checkout of this module (the folder that contains ``expertrag/``)."""
    return Path(__file__).resolve().parents[2]


def default_lib_dir() -> Path:
    """Return the jar folder: ``EXPERTRAG_NEO4J_LIB`` when set, else ``.neo4j/lib`` in the checkout."""
    configured = os.environ.get("EXPERTRAG_NEO4J_LIB")
    if configured:
        return Path(configured)
    return repository_root() / ".neo4j" / "lib"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def find_java(java: str | None = None) -> str:
    """Return the path of a Java 17+ launcher: ``java``, else ``$JAVA_HOME/bin/java``, else ``java`` on PATH."""
    candidates = [java] if java else []
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidates.append(str(Path(java_home) / "bin" / "java"))
    candidates.append("java")
    for candidate in candidates:
        path = shutil.which(candidate)
        if path is None:
            continue
        major = java_major_version(path)
        if major is not None and major >= MIN_JAVA_MAJOR:
            return path
        logger.info("Skipping %s: Java %s is older than %d", path, major, MIN_JAVA_MAJOR)
    raise Neo4jSetupError(
        f"No Java {MIN_JAVA_MAJOR}+ found (tried {', '.join(candidates)}). "
        "Install a JDK (Debian: apt-get install openjdk-17-jdk-headless) or set JAVA_HOME."
    )


def java_major_version(java: str) -> int | None:
    """Return the major version that ``java -version`` reports, or None when it cannot be read."""
    try:
        completed = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', completed.stderr + completed.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    # Java 8 and older report "1.8.0_x".
    return int(match.group(2) or 0) if major == 1 else major


def check_jars(lib_dir: Path) -> None:
    """Raise ``Neo4jSetupError`` unless ``lib_dir`` contains the Neo4j server jar."""
    if not any(lib_dir.glob("neo4j-5.*.jar")):
        raise Neo4jSetupError(
            f"No Neo4j jars found in {lib_dir}. Run scripts/neo4j_setup.sh (needs Maven) "
            "or set EXPERTRAG_NEO4J_LIB to a folder with the Neo4j 5.26 runtime jars."
        )


def render_config(home: Path, port: int, page_cache: str, auth_enabled: bool) -> str:
    """Return the text of a ``neo4j.conf`` that keeps every file in ``home`` and listens only on loopback.

    Neo4j rejects unknown keys at startup, so only Neo4j 5.x setting names appear here.
    """
    settings = {
        "server.default_listen_address": "127.0.0.1",
        "server.default_advertised_address": "127.0.0.1",
        "server.bolt.enabled": "true",
        "server.bolt.listen_address": f"127.0.0.1:{port}",
        "server.bolt.advertised_address": f"127.0.0.1:{port}",
        "server.http.enabled": "false",
        "server.https.enabled": "false",
        "dbms.routing.enabled": "false",
        "dbms.security.auth_enabled": "true" if auth_enabled else "false",
        # Neo4j sends usage reports to neo4j.com unless this is off.
        "dbms.usage_report.enabled": "false",
        "server.directories.data": str(home / "data"),
        "server.directories.logs": str(home / "logs"),
        "server.directories.run": str(home / "run"),
        "server.directories.plugins": str(home / "plugins"),
        "server.directories.import": str(home / "import"),
        "server.directories.lib": str(home / "lib"),
        "server.directories.licenses": str(home / "licenses"),
        "server.directories.transaction.logs.root": str(home / "data" / "transactions"),
        "server.memory.pagecache.size": page_cache,
        "db.tx_log.preallocate": "false",
        "db.transaction.timeout": "60s",
        # Without these internal settings the Bolt server waits about 10 s on shutdown, twice 5 s
        # (measured on 5.26.30). NOTE: internal keys may be renamed in other Neo4j versions, and
        # strict validation would then reject the file.
        "internal.server.bolt.connection_shutdown_wait_time": "0s",
        "internal.dbms.bolt.netty_server_shutdown_quiet_period": "0",
        "internal.dbms.bolt.netty_server_shutdown_timeout": "5",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file, or a note that it does not exist."""
    if not path.is_file():
        return f"({path} does not exist)"
    with path.open(encoding="utf-8", errors="replace") as handle:
        return "".join(handle.readlines()[-lines:])


class Neo4jServer:
    """One Neo4j Community server process on 127.0.0.1, with its data in a private home folder.

    Example::

        with Neo4jServer() as server:
            store = Neo4jGraphStore(server.uri)

    Auth is off unless ``password`` is given. With a password the server starts with
    auth on and the ``neo4j`` user gets that password before ``start`` returns.
    """

    def __init__(
        self,
        lib_dir: Path | None = None,
        home: Path | None = None,
        port: int | None = None,
        heap: str = "1g",
        page_cache: str = "128m",
        password: str | None = None,
        java: str | None = None,
        startup_timeout: float = 120.0,
        stop_timeout: float = 30.0,
    ) -> None:
        """Configure a server; nothing starts before ``start``.

        Args:
            lib_dir: Folder with the Neo4j runtime jars; ``default_lib_dir()`` when None.
            home: Home folder for conf, data and logs; a new temporary folder, deleted by
                ``stop``, when None. A given folder is kept, so a server can restart on its data.
            port: Bolt port on 127.0.0.1; a free one when None.
            heap: Maximum JVM heap (``-Xmx``), for example ``"1g"``.
            page_cache: ``server.memory.pagecache.size``, for example ``"128m"``.
            password: Password of the ``neo4j`` user; None turns auth off.
            java: Java launcher; ``$JAVA_HOME/bin/java`` or ``java`` on PATH when None.
            startup_timeout: Seconds to wait until a ``RETURN 1`` query succeeds.
            stop_timeout: Seconds to wait after SIGTERM before the process is killed.
        """
        if password is not None and len(password) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"The Neo4j password must have at least {MIN_PASSWORD_LENGTH} characters")
        self.lib_dir = lib_dir or default_lib_dir()
        self._given_home = home
        self.home: Path | None = home
        self.port = port or 0
        self.heap = heap
        self.page_cache = page_cache
        self.password = password
        self.java = java
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.start_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None

    @property
    def uri(self) -> str:
        """Bolt URI of the server, for example ``bolt://127.0.0.1:7687``."""
        return f"bolt://127.0.0.1:{self.port}"

    @property
    def auth(self) -> tuple[str, str] | None:
        """Credentials for the driver, or None when auth is off."""
        return (INITIAL_USER, self.password) if self.password is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def console_log(self) -> Path:
        """File that receives the server's stdout and stderr."""
        assert self.home is not None, "the server has no home before start()"
        return self.home / "logs" / "console.log"

    def start(self) -> "Neo4jServer":
        """Start the server, block until a ``RETURN 1`` query succeeds and set ``start_seconds``.

        Raises:
            Neo4jSetupError: Java 17+ or the jars are missing.
            GraphStoreError: The server exited early or was not ready within ``startup_timeout``.
        """
        if self.running:
            return self
        java = find_java(self.java)
        check_jars(self.lib_dir)
        if self.home is None:
            self.home = Path(tempfile.mkdtemp(prefix="expertrag-neo4j-"))
        if not self.port:
            self.port = free_port()
        self._write_config()

        command = [
            java, "-Xms256m", f"-Xmx{self.heap}", *JVM_FLAGS,
            "-cp", str(self.lib_dir / "*"), ENTRY_POINT,
            f"--home-dir={self.home}", f"--config-dir={self.home / 'conf'}", "--console-mode",
        ]
        logger.info("Starting Neo4j on %s with home %s", self.uri, self.home)
        started = time.perf_counter()
        if self._console is not None:
            # The console log of a process that exited without stop().
            self._console.close()
        console = self.console_log.open("ab")
        self._console = console
        self._process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        atexit.register(self.stop)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - started
        logger.info("Neo4j is ready on %s after %.1f s", self.uri, self.start_seconds)
        return self

    def _write_config(self) -> None:
        assert self.home is not None
        for folder in ("conf", "data", "logs", "run", "plugins", "import", "lib", "licenses"):
            (self.home / folder).mkdir(parents=True, exist_ok=True)
        config = render_config(self.home, self.port, self.page_cache, auth_enabled=self.password is not None)
        (self.home / "conf" / "neo4j.conf").write_text(config, encoding="utf-8")

    def _wait_until_ready(self) -> None:
        """Poll the Bolt port with the driver until ``RETURN 1`` succeeds, the process exits or time runs out."""
        from neo4j.exceptions import AuthError, ClientError, DriverError, Neo4jError

        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise GraphStoreError(self._failure_message(f"exited with code {code} during startup"))
            try:
                self._probe()
                return
            except AuthError as error:
                # A wrong password does not get better by waiting.
                raise GraphStoreError(self._failure_message(f"rejected the configured credentials: {error}")) from None
            except ClientError as error:
                # A rejected query fails the same way on every try, except while the database is still created.
                if error.code != "Neo.ClientError.Database.DatabaseNotFound":
                    raise GraphStoreError(self._failure_message(f"rejected a startup query: {error}")) from None
                last_error = error
            except (DriverError, Neo4jError, OSError) as error:
                last_error = error
            time.sleep(0.5)
        raise GraphStoreError(self._failure_message(
            f"timed out: RETURN 1 did not succeed within {self.startup_timeout:.0f} s (last error: {last_error})"
        ))

    def _probe(self) -> None:
        """Run ``RETURN 1``, replacing the initial password first when an auth-enabled home starts for the first time."""
        from neo4j.exceptions import AuthError

        if self.password is not None:
            try:
                self._run_return_one(self.auth)
                return
            except AuthError:
                # A new home still has the initial neo4j/neo4j credentials.
                self._set_initial_password()
        self._run_return_one(self.auth)

    def _run_return_one(self, auth: tuple[str, str] | None) -> None:
        import neo4j

        with neo4j.GraphDatabase.driver(self.uri, auth=auth, connection_timeout=2.0, max_connection_pool_size=1) as driver:
            with driver.session(database="neo4j") as session:
                session.run("RETURN 1").consume()

    def _set_initial_password(self) -> None:
        import neo4j

        assert self.password is not None
        with neo4j.GraphDatabase.driver(
            self.uri, auth=(INITIAL_USER, INITIAL_PASSWORD), connection_timeout=2.0, max_connection_pool_size=1
        ) as driver:
            with driver.session(database="system") as session:
                session.run(
                    "ALTER CURRENT USER SET PASSWORD FROM $old TO $new",
                    old=INITIAL_PASSWORD, new=self.password,
                ).consume()
        logger.info("Set the password of user %s on %s", INITIAL_USER, self.uri)

    def _failure_message(self, problem: str) -> str:
        assert self.home is not None
        return (
            f"Neo4j on {self.uri} {problem}.\n"
            f"--- last lines of {self.console_log} ---\n{tail(self.console_log)}\n"
            f"--- last lines of {self.home / 'logs' / 'debug.log'} ---\n{tail(self.home / 'logs' / 'debug.log')}"
        )

    def stop(self) -> None:
        """Stop the server with SIGTERM, kill it after ``stop_timeout`` seconds and delete a temporary home."""
        process, self._process = self._process, None
        if process is not None:
            atexit.unregister(self.stop)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    logger.warning("Neo4j on %s did not stop within %.0f s after SIGTERM. Killing it.",
                                   self.uri, self.stop_timeout)
                    process.kill()
                    process.wait()
            logger.info("Stopped Neo4j on %s (exit code %s)", self.uri, process.returncode)
        if self._console is not None:
            self._console.close()
            self._console = None
        if self._given_home is None and self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    def kill(self) -> None:
        """Kill the server process at once (SIGKILL), as a crash would. The home folder stays."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> "Neo4jServer":
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _raise_keyboard_interrupt(signal_number: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Start a local Neo4j, print its Bolt URI and serve until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m expertrag.kg_build.neo4j_server",
        description="Run a local Neo4j Community server on 127.0.0.1 from the jars in .neo4j/lib.",
    )
    parser.add_argument("--port", type=int, default=None, help="Bolt port on 127.0.0.1 (default: a free port)")
    parser.add_argument("--home", type=Path, default=None,
                        help="home folder for conf, data and logs, kept after exit (default: a temporary folder)")
    parser.add_argument("--heap", default="1g", help="maximum JVM heap, for example 1g (default: 1g)")
    parser.add_argument("--page-cache", default="128m", help="page cache size, for example 128m (default: 128m)")
    parser.add_argument("--password", default=None,
                        help="turn auth on with this password for user neo4j (default: auth off)")
    parser.add_argument("--lib-dir", type=Path, default=None, help="folder with the Neo4j jars (default: .neo4j/lib)")
    arguments = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = Neo4jServer(lib_dir=arguments.lib_dir, home=arguments.home, port=arguments.port,
                         heap=arguments.heap, page_cache=arguments.page_cache, password=arguments.password)
    # SIGTERM ends the wait below the same way Ctrl-C does, so the server always gets stopped.
    # SIGINT gets its default handler back because a shell starts background jobs with it ignored.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.start()
    except GraphStoreError as error:
        print(f"error: {error}", flush=True)
        return 1
    user = f" (user {INITIAL_USER})" if server.password else " (auth off)"
    print(f"Neo4j is ready at {server.uri}{user} after {server.start_seconds:.1f} s. Press Ctrl-C to stop.", flush=True)
    try:
        while server.running:
            time.sleep(1.0)
        print(f"error: the Neo4j process exited.\n{tail(server.console_log)}", flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
