"""The session fixture ``neo4j_uri``: a Neo4j server for the tests.

A conftest imports it with ``from tests.neo4j_fixture import neo4j_uri``. It uses
``NEO4J_URI`` (with ``NEO4J_USER`` and ``NEO4J_PASSWORD``) when set, else starts one
local server from the jars that ``scripts/neo4j_setup.sh`` puts in ``.neo4j/lib``.
Tests delete everything in that database, so ``NEO4J_URI`` must point at a disposable one.

Without Java or the jars the tests that use it are skipped, except under ``CI=true``,
where a missing Neo4j fails them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from expertrag.kg_build.neo4j_server import Neo4jServer, Neo4jSetupError

# One server per test process, even when this fixture is imported into several modules.
_server: Neo4jServer | None = None
_setup_error: str | None = None


def neo4j_auth() -> tuple[str, str] | None:
    """Return (user, password) from ``NEO4J_USER`` and ``NEO4J_PASSWORD``, or None when no user is set."""
    user = os.environ.get("NEO4J_USER")
    if not user:
        return None
    return user, os.environ.get("NEO4J_PASSWORD", "")


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it under ``CI=true`` where Neo4j must be available."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"Neo4j is required under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def start_local_server(**options: object) -> Neo4jServer:
    """Start a Neo4j server from ``.neo4j/lib``, skipping (or failing under CI) when Java or the jars are missing."""
    server = Neo4jServer(**options)  # type: ignore[arg-type]
    try:
        server.start()
    except Neo4jSetupError as error:
        skip_or_fail(str(error))
    return server


@pytest.fixture(scope="session")
def neo4j_uri() -> Iterator[str]:
    """Bolt URI of the test Neo4j server; credentials come from ``neo4j_auth()``."""
    global _server, _setup_error
    external = os.environ.get("NEO4J_URI")
    if external:
        yield external
        return
    if _setup_error is not None:
        skip_or_fail(_setup_error)
    if _server is None or not _server.running:
        try:
            _server = Neo4jServer()
            _server.start()
        except Neo4jSetupError as error:
            _setup_error = str(error)
            skip_or_fail(_setup_error)
    yield _server.uri
    # The server stays up until the process exits (Neo4jServer.start registers an atexit stop),
    # because another module may hold its own copy of this fixture.


def clear_database(uri: str, auth: tuple[str, str] | None = None, database: str = "neo4j") -> None:
    """Delete every node and relationship and drop every constraint and user index of ``database``."""
    import neo4j

    with neo4j.GraphDatabase.driver(uri, auth=auth) as driver:
        with driver.session(database=database) as session:
            session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS").consume()
            for record in list(session.run("SHOW CONSTRAINTS YIELD name")):
                session.run(f"DROP CONSTRAINT {quote_name(record['name'])} IF EXISTS").consume()
            for record in list(session.run("SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP'")):
                session.run(f"DROP INDEX {quote_name(record['name'])} IF EXISTS").consume()


def quote_name(name: str) -> str:
    """Quote a schema name read from the server as a Cypher identifier."""
    return "`" + name.replace("`", "``") + "`"
