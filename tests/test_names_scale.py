"""Names for a large team, end to end through gateways with auth on SQLite and on
PostgreSQL: artifacts and tagged versions paged by cursors (no duplicate, no gap,
sorted, only what the token may read), aliases moved by compare-and-set under races
(exactly one winner), their history and removal, and the CLI over all of it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkyard import Client
from chunkyard.errors import AliasConflict, AliasNotFound, VersionNotFound
from conftest import RunningGateway, cli, start_gateway
from stores.conftest import require_env

PREFIX = "scale/"
TEAMS = ("team-a", "team-b")
AUTHORS = ("alice", "bob", "carol")
#: (name, version) -> tags of every version the module pushes
Catalog = dict[tuple[str, int], dict[str, str]]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gw(request, tmp_path_factory) -> Iterator[RunningGateway]:
    """A gateway with auth (an admin token in ``gw.admin``) on each database."""
    from chunkyard.repository.tokens import offline

    env = {"CHUNKYARD_AUTH": "1"}
    drop = None
    if request.param == "postgresql":
        base = require_env("postgres", "CHUNKYARD_TEST_POSTGRES_URL")["CHUNKYARD_TEST_POSTGRES_URL"]
        name = "n_" + uuid.uuid4().hex[:10]
        subprocess.run(["psql", base, "-qc", f"create database {name}"], check=True)
        env["CHUNKYARD_DB"] = base.rsplit("/", 1)[0] + "/" + name
        drop = (base, name)
    gw, server, thread = start_gateway(tmp_path_factory.mktemp(request.param), **env)
    made = asyncio.run(offline(gw.settings.db_url, "create", scopes=["admin"]))
    gw.admin, gw.admin_id, gw.kind = made["token"], made["id"], request.param  # type: ignore[attr-defined]
    yield gw
    server.should_exit = True
    thread.join(timeout=10)
    if drop is not None:
        base, name = drop
        subprocess.run(["psql", base, "-qc", f"drop database {name} with (force)"], check=False)


def admin(gw: RunningGateway) -> Client:
    return Client(gw.url, token=gw.admin)  # type: ignore[attr-defined]


def push(c: Client, tmp: Path, name: str, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """A new version of ``name``: content of its own (the same content twice is no new
    version)."""
    src = tmp / uuid.uuid4().hex
    src.write_bytes(f"{name} {uuid.uuid4()}".encode() * 20)
    r = c.push(src, name, tags)
    assert r["created"], r
    return r


@pytest.fixture(scope="module")
def seeded(gw: RunningGateway, tmp_path_factory) -> Catalog:
    """50 artifacts under ``scale/`` (25 per team), a tenth of them with a second
    version, tagged author / branch / purpose; and neighbours outside the prefix."""
    tmp = tmp_path_factory.mktemp("seed")
    out: Catalog = {}
    with admin(gw) as c:
        for i in range(50):
            name = f"{PREFIX}{TEAMS[i % 2]}/m{i // 2:02}"
            tags = {"author": AUTHORS[i % 3], "branch": "main" if i % 4 < 2 else "dev"}
            if i % 7 == 0:
                tags["purpose"] = "ab-test"
            out[(name, push(c, tmp, name, tags)["version"])] = tags
            if i % 10 == 0:
                again = {"author": "alice", "branch": "main", "purpose": "retrain"}
                out[(name, push(c, tmp, name, again)["version"])] = again
        for name in ("scalex/m", "other/m", "scale"):
            push(c, tmp, name, {"author": "alice", "branch": "main"})
    return out


def pages(fetch, key: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Every item of a listing fetched ``limit`` at a time, and the number of pages;
    each page is checked to hold at most ``limit`` items."""
    items: list[dict[str, Any]] = []
    cursor, n = "", 0
    while True:
        page = fetch(cursor, limit)
        n += 1
        assert len(page[key]) <= limit
        items += page[key]
        if page["next"] is None:
            return items, n
        cursor = page["next"]
        assert n < 100, "the cursor does not advance"


def test_artifacts_paged_by_a_cursor(gw, seeded):
    names = sorted({n for n, _ in seeded})
    assert len(names) == 50
    with admin(gw) as c:
        got, n = pages(lambda cur, lim: c.ls_page(PREFIX, cur, lim), "artifacts", 7)
        assert [a["name"] for a in got] == names  # sorted, no duplicate, no gap
        assert n == 8
        latest = {a["name"]: a["latest"] for a in got}
        assert latest[f"{PREFIX}team-a/m00"] == 2 and latest[f"{PREFIX}team-b/m00"] == 1
        assert [a["name"] for a in c.ls("scale")] == ["scale", *names, "scalex/m"]


def expected(seeded: Catalog, prefix: str, tags: dict[str, str], readable: str = "") -> list[str]:
    return [
        f"{n}@{v}"
        for (n, v), t in sorted(seeded.items())
        if n.startswith(prefix) and n.startswith(readable) and tags.items() <= t.items()
    ]


@pytest.mark.parametrize(
    "prefix, tags",
    [
        (PREFIX, {"branch": "main"}),
        (PREFIX, {"branch": "main", "author": "alice"}),
        (PREFIX, {"purpose": "ab-test", "author": "bob"}),
        (f"{PREFIX}team-b/", {"branch": "dev"}),
        (PREFIX, {}),
        ("", {"author": "alice", "branch": "main"}),
    ],
)
def test_versions_by_tag_paged_by_a_cursor(gw, seeded, prefix, tags):
    with admin(gw) as c:
        got, _ = pages(lambda cur, lim: c.find_versions(prefix, tags, cur, lim), "versions", 7)
    listed = [f"{v['name']}@{v['version']}" for v in got]
    want = expected(seeded, prefix, tags)
    if not prefix:  # the neighbours outside scale/ carry these tags too
        want = sorted(
            [*want, "other/m@1", "scale@1", "scalex/m@1"],
            key=lambda s: (s.rpartition("@")[0], int(s.rpartition("@")[2])),
        )
    assert listed == want
    assert len(want) >= 3
    assert all(tags.items() <= v["tags"].items() for v in got)


def test_a_token_lists_only_what_it_may_read(gw, seeded, tmp_path):
    with admin(gw) as c:
        part = c.create_token([f"read:{PREFIX}team-a/", "read:other/"])["token"]
        none = c.create_token(["read:nothing/"])["token"]
    tags = {"branch": "main"}
    with Client(gw.url, token=part) as c:
        got, _ = pages(lambda cur, lim: c.find_versions(PREFIX, tags, cur, lim), "versions", 7)
        assert [f"{v['name']}@{v['version']}" for v in got] == expected(
            seeded, PREFIX, tags, readable=f"{PREFIX}team-a/"
        )
        arts, _ = pages(lambda cur, lim: c.ls_page(PREFIX, cur, lim), "artifacts", 7)
        assert [a["name"] for a in arts] == sorted(
            {n for n, _ in seeded if n.startswith(f"{PREFIX}team-a/")}
        )
        everything, _ = pages(lambda cur, lim: c.find_versions("", tags, cur, lim), "versions", 7)
        assert {v["name"].split("/")[0] for v in everything} == {"scale", "other"}
        assert all(v["name"].startswith((f"{PREFIX}team-a/", "other/")) for v in everything)
    with Client(gw.url, token=none) as c:
        assert c.find_versions(PREFIX, tags) == {"versions": [], "next": None}
        assert c.ls_page(PREFIX) == {"artifacts": [], "next": None}


def test_bad_listing_queries_are_400(gw):
    import httpx

    auth = {"authorization": f"Bearer {gw.admin}"}
    for query, code in (
        ("tag=nokey", "bad_request"),
        ("tag==v", "bad_request"),
        ("tag=k=v%01", "bad_request"),
        ("cursor=scale/x", "bad_request"),
        ("cursor=@3", "bad_request"),
        ("limit=0", "bad_request"),
        ("tag=" + "&tag=".join(f"k{i}=v" for i in range(9)), "bad_request"),
        ("tag=k=" + "v" * 513, "bad_request"),
    ):
        r = httpx.get(f"{gw.url}/v1/versions?{query}", headers=auth)
        assert (r.status_code, r.json()["error"]["code"]) == (400, code), (query, r.text)
    r = httpx.get(f"{gw.url}/v1/versions?tag=k=v", headers={})
    assert r.status_code == 401


def race(gw: RunningGateway, name: str, alias: str, targets: tuple[int, int], expect: int):
    """Two clients set ``alias`` at once, to different versions, both expecting it at
    ``expect``: their answers (a dict, or the AliasConflict raised)."""
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def run(i: int) -> None:
        with admin(gw) as c:
            c.show(name)  # connected before the start
            barrier.wait()
            try:
                results[i] = c.set_alias(name, alias, targets[i], expect=expect)
            except AliasConflict as exc:
                results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_concurrent_compare_and_set_has_one_winner(gw, tmp_path):
    """20 rounds of two promotions with the same --expect: one wins, the other is told
    where the alias points now; the first round creates the alias (--expect 0) from
    both sides at once (no IntegrityError, no 500)."""
    name = "race/model"
    with admin(gw) as c:
        for _ in range(3):
            push(c, tmp_path, name)
    current = 0
    for rnd in range(20):
        others = [v for v in (1, 2, 3) if v != current]  # both move it away from current
        targets = (others[rnd % 2], others[1 - rnd % 2])
        results = race(gw, name, "prod", targets, current)
        won = [i for i, r in enumerate(results) if isinstance(r, dict)]
        lost = [r for r in results if isinstance(r, AliasConflict)]
        assert len(won) == 1 and len(lost) == 1, (rnd, results)
        winner = targets[won[0]]
        assert results[won[0]]["previous"] == (current or None)
        assert lost[0].code == "alias_conflict"
        assert f"points at version {winner}" in lost[0].message, lost[0].message
        assert lost[0].detail["current"] == winner
        current = winner
    with admin(gw) as c:
        assert c.show(f"{name}:prod")["version"] == current
        history = c.alias_history(name, "prod")
    assert len(history) == 20  # one move per round: the losers left no trace
    assert history[0]["previous"] is None
    assert all(a["version"] == b["previous"] for a, b in zip(history, history[1:], strict=False))


def _sessions(url: str, where: str) -> int:
    """Connections to this database in a given state (``where``: SQL on pg_stat_activity)."""
    sql = f"select count(*) from pg_stat_activity where datname = current_database() and {where}"
    out = subprocess.run(["psql", url, "-Atc", sql], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def _until(check, what: str) -> None:
    deadline = time.time() + 20
    while not check():
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_both_promotions_wait_on_the_artifact_lock_and_one_wins(gw, tmp_path):
    """Deterministically concurrent (PostgreSQL): a third connection holds the artifact's
    row while both requests arrive; both have found the version and wait on the lock;
    once it is let go, one moves the alias and the other, reading after it, loses (with
    a compare-and-set) or moves it next (without)."""
    if gw.kind != "postgresql":
        pytest.skip("row locks: PostgreSQL (SQLite runs one writer at a time)")
    name = "race/locked"
    with admin(gw) as c:
        for _ in range(3):
            push(c, tmp_path, name)
    url = gw.settings.db_url
    current = 0
    for compare in (True, False, True):
        targets = tuple(v for v in (1, 2, 3) if v != current)[:2]  # both move it
        holder = subprocess.Popen(
            ["psql", url, "-q"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        assert holder.stdin is not None
        holder.stdin.write(f"BEGIN; SELECT id FROM artifacts WHERE name = '{name}' FOR UPDATE;\n")
        holder.stdin.flush()
        _until(
            lambda: _sessions(url, "state = 'idle in transaction' and query like '%FOR UPDATE%'"),
            "the lock was never taken",
        )
        results: list[Any] = [None, None]
        expect = current if compare else None

        def run(i: int, expect=expect, targets=targets, results=results) -> None:
            with admin(gw) as c:
                try:
                    results[i] = c.set_alias(name, "prod", targets[i], expect=expect)
                except AliasConflict as exc:
                    results[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        _until(lambda: _sessions(url, "wait_event_type = 'Lock'") == 2, "nobody waited")
        holder.stdin.write("COMMIT;\n")
        holder.stdin.close()
        holder.wait(timeout=20)
        for t in threads:
            t.join(timeout=60)
        won = [r for r in results if isinstance(r, dict)]
        if not compare:  # both move it, one after the other
            assert len(won) == 2, results
            first, second = sorted(won, key=lambda r: r["previous"] != current)
            assert first["previous"] == current
            assert second["previous"] == first["version"]
            current = second["version"]
            continue
        lost = [r for r in results if isinstance(r, AliasConflict)]
        assert len(won) == 1 and len(lost) == 1, results
        assert f"points at version {won[0]['version']}" in lost[0].message
        current = won[0]["version"]
    with admin(gw) as c:
        assert c.show(f"{name}:prod")["version"] == current
        assert len(c.alias_history(name, "prod")) == 4


def test_alias_history_removal_and_listing(gw, tmp_path):
    name = "hist/model"
    with admin(gw) as c:
        writer = c.create_token(["write:hist/"])
        for _ in range(3):
            push(c, tmp_path, name)
        t0 = time.time()
        c.set_alias(name, "champion", 1)
    with Client(gw.url, token=writer["token"]) as w:
        assert w.set_alias(name, "champion", 2, expect=1)["previous"] == 1
        w.set_alias(name, "challenger", 3)
        assert w.aliases(name) == [
            {"alias": "challenger", "version": 3, "updated_at": pytest.approx(time.time(), abs=60)},
            {"alias": "champion", "version": 2, "updated_at": pytest.approx(time.time(), abs=60)},
        ]
        assert w.pull(f"{name}:champion", tmp_path / "champ")["version"] == 2  # resolved now
        with pytest.raises(AliasConflict, match="points at version 2"):
            w.remove_alias(name, "champion", expect=1)
        assert w.remove_alias(name, "champion", expect=2) == {
            "name": name,
            "alias": "champion",
            "previous": 2,
        }
        with pytest.raises(AliasNotFound):
            w.remove_alias(name, "champion")
        with pytest.raises(VersionNotFound):
            w.show(f"{name}:champion")
        w.set_alias(name, "champion", 3, expect=0)
        moves = w.alias_history(name, "champion")
    writer_id = writer["id"]
    assert [(m["previous"], m["version"], m["moved_by"]) for m in moves] == [
        (None, 1, gw.admin_id),
        (1, 2, writer_id),
        (2, None, writer_id),
        (None, 3, writer_id),
    ]
    times = [m["moved_at"] for m in moves]
    assert times == sorted(times) and t0 - 1 < times[0] and times[-1] < time.time() + 1
    with admin(gw) as c:
        assert [m["version"] for m in c.alias_history(name, "challenger")] == [3]
        assert c.alias_history(name, "never") == []
    with admin(gw) as c:
        reader = c.create_token(["read:hist/"])["token"]
    with Client(gw.url, token=reader) as r:
        assert len(r.alias_history(name, "champion")) == 4
        from chunkyard.errors import Forbidden

        with pytest.raises(Forbidden):
            r.remove_alias(name, "champion")
        with pytest.raises(Forbidden):
            r.set_alias(name, "champion", 1)


def test_history_without_auth_names_no_token(client, tmp_path):
    push(client, tmp_path, "noauth/model")
    client.set_alias("noauth/model", "prod", 1)
    (move,) = client.alias_history("noauth/model", "prod")
    assert (move["previous"], move["version"], move["moved_by"]) == (None, 1, None)


def test_cli(gw, seeded, tmp_path):
    env = {**os.environ, "CHUNKYARD_URL": gw.url, "CHUNKYARD_TOKEN": gw.admin}

    def cy(*args: str) -> subprocess.CompletedProcess:
        return cli(env, *args)

    # ls: a page, and the cursor of the next on the last line
    p = cy("ls", PREFIX, "--limit", "7")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 8 and lines[-1].startswith("next: ")
    assert lines[0].startswith(f"{PREFIX}team-a/m00  latest=2")
    p = cy("ls", PREFIX, "--limit", "7", "--cursor", lines[-1].removeprefix("next: "), "--json")
    page = json.loads(p.stdout)
    assert [a["name"] for a in page["artifacts"]][0] == sorted({n for n, _ in seeded})[7]
    assert page["next"] is not None
    # ls --tag: versions
    p = cy("ls", PREFIX, "--tag", "purpose=ab-test", "--tag", "author=bob", "--json")
    page = json.loads(p.stdout)
    want = expected(seeded, PREFIX, {"purpose": "ab-test", "author": "bob"})
    assert [f"{v['name']}@{v['version']}" for v in page["versions"]] == want
    p = cy("ls", PREFIX, "--tag", "branch=main", "--limit", "3")
    lines = p.stdout.splitlines()
    assert lines[0].startswith(f"{PREFIX}team-a/m00@1  ") and "branch=main" in lines[0]
    assert lines[-1] == "next: " + expected(seeded, PREFIX, {"branch": "main"})[2]
    assert "author=alice" in cy("push", "--help").stdout
    # aliases: a lost compare-and-set exits 4 and says where the alias points
    name = "cli/aliased"
    with admin(gw) as c:
        for _ in range(2):
            push(c, tmp_path, name)
    assert cy("alias", "set", name, "prod", "1", "--expect", "0").returncode == 0
    p = cy("alias", "set", name, "prod", "2", "--expect", "0")
    assert p.returncode == 4
    assert "points at version 1" in p.stderr and "alias_conflict" in p.stderr
    p = cy("alias", "set", name, "prod", "2", "--expect", "1")
    assert p.returncode == 0 and "→ 2 (was 1)" in p.stdout
    p = cy("alias", "ls", name)
    assert p.returncode == 0 and p.stdout.startswith("prod  → 2  since ")
    p = cy("alias", "rm", name, "prod", "--expect", "1")
    assert p.returncode == 4 and "points at version 2" in p.stderr
    assert cy("alias", "rm", name, "prod").returncode == 0
    p = cy("alias", "rm", name, "prod")
    assert p.returncode == 3 and "alias_not_found" in p.stderr
    p = cy("alias", "history", name, "prod")
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].endswith(f"(none) → 1  by {gw.admin_id}")
    assert lines[1].endswith(f"1 → 2  by {gw.admin_id}")
    assert lines[2].endswith(f"2 → (removed)  by {gw.admin_id}")
    p = cy("alias", "history", name, "prod", "--json")
    assert [m["version"] for m in json.loads(p.stdout)["moves"]] == [1, 2, None]
