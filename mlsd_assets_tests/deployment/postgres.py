"""A real PostgreSQL for tests: the machine's cluster, a throwaway role and databases per session."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg2
import psycopg2.extensions


def _as_postgres(port: int, sql: str) -> None:
    """Run SQL as the cluster's superuser (peer authentication through the postgres OS user)."""
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            "psql",
            "-p",
            str(port),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
    )


def unavailable_reason() -> str | None:
    """Why no server can be had here, or None."""
    if shutil.which("pg_lsclusters") is None or shutil.which("pg_ctlcluster") is None:
        return "PostgreSQL server binaries absent (apt-get install postgresql)"
    if os.geteuid() != 0:
        return "starting the PostgreSQL cluster and creating a test role needs root (runuser -u postgres)"
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    if not out.strip():
        return "postgresql is installed but has no cluster (pg_createcluster 15 main)"
    return None


def ensure_cluster_online() -> int:
    """Start the first cluster if it is down (like `.ci/run` does) and return its port; it is left running."""
    version, name, port, status = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout.split()[:4]
    if status != "online":
        subprocess.run(["pg_ctlcluster", version, name, "start"], check=True, capture_output=True, text=True)
    deadline = time.monotonic() + 60
    while subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", port]).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL cluster {version}/{name} on port {port} did not accept connections in 60 s")
        time.sleep(0.5)
    return int(port)


@dataclass
class PostgresServer:
    """A login role with CREATEDB on a live server; databases made through it are dropped by `drop_all`."""

    port: int
    user: str = field(default_factory=lambda: f"mlsd_test_{secrets.token_hex(4)}")
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    host: str = "127.0.0.1"
    databases: list[str] = field(default_factory=list)

    def create_role(self) -> None:
        _as_postgres(self.port, f"CREATE ROLE {self.user} LOGIN CREATEDB PASSWORD '{self.password}'")

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def dagster_env(self, database: str) -> dict[str, str]:
        """The variables docker/dagster.yaml reads (`env:`) to reach this database."""
        return {
            "DAGSTER_POSTGRES_HOST": self.host,
            "DAGSTER_POSTGRES_PORT": str(self.port),
            "DAGSTER_POSTGRES_USER": self.user,
            "DAGSTER_POSTGRES_PASSWORD": self.password,
            "DAGSTER_POSTGRES_DB": database,
        }

    @contextmanager
    def connect(self, database: str) -> Iterator[psycopg2.extensions.connection]:
        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password, dbname=database)
        try:
            yield conn
        finally:
            conn.close()

    def create_database(self, purpose: str) -> str:
        name = f"{self.user}_{purpose}"
        with self.connect("postgres") as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")
        self.databases.append(name)
        return name

    def drop_all(self) -> None:
        for name in self.databases:
            _as_postgres(self.port, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        _as_postgres(self.port, f"DROP ROLE IF EXISTS {self.user}")
