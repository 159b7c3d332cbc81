"""The same catalog on PostgreSQL: schema, migrations and queries need no rewrite."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid

import pytest

from chunkyard import Client
from conftest import random_bytes, start_gateway
from stores.conftest import require_env


@pytest.fixture(scope="module")
def pg_gateway(tmp_path_factory):
    require_env("postgres", "CHUNKYARD_TEST_POSTGRES_URL")
    base = os.environ["CHUNKYARD_TEST_POSTGRES_URL"]
    name = "t_" + uuid.uuid4().hex[:10]
    subprocess.run(["psql", base, "-qc", f"create database {name}"], check=True)
    gw, server, thread = start_gateway(
        tmp_path_factory.mktemp("pg"), CHUNKYARD_DB=base.rsplit("/", 1)[0] + "/" + name
    )
    yield gw
    server.should_exit = True
    thread.join(timeout=10)
    subprocess.run(["psql", base, "-qc", f"drop database {name} with (force)"], check=False)


def test_push_pull_alias_stats_on_postgres(pg_gateway, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(3_000_000, seed=100))
    with Client(pg_gateway.url) as c:
        assert c.push(src, "pg/model", tags={"a": "b"})["version"] == 1
        assert not c.push(src, "pg/model")["created"]
        c.pull("pg/model", tmp_path / "o.bin")
        assert (tmp_path / "o.bin").read_bytes() == src.read_bytes()
        c.set_alias("pg/model", "prod", 1)
        assert c.show("pg/model:prod")["tags"] == {"a": "b"}
        s = c.stats()
        assert s["versions"] == 1 and s["packs"] == 1 and isinstance(s["dedup_ratio"], float)


def test_eight_concurrent_writers_on_postgres(pg_gateway, tmp_path):
    base = random_bytes(1_000_000, seed=101)
    results, errors = [None] * 8, []

    def run(i: int) -> None:
        src = tmp_path / f"c{i}"
        src.write_bytes(base + random_bytes(100_000, seed=200 + i))
        try:
            with Client(pg_gateway.url) as c:
                results[i] = (src, c.push(src, f"pg/conc/{i % 2}"))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with Client(pg_gateway.url) as c:
        assert sorted(v["version"] for v in c.versions("pg/conc/0")) == [1, 2, 3, 4]
        for src, r in results:
            out = tmp_path / f"o-{r['name'].replace('/', '_')}-{r['version']}"
            c.pull(f"{r['name']}@{r['version']}", out)
            assert out.read_bytes() == src.read_bytes()


def test_head_revision_matches_alembic():
    """``Database.migrate`` skips Alembic when the catalog is at this revision."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from chunkyard.catalog.db import MIGRATIONS, head_revision

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_heads() == [head_revision()]
