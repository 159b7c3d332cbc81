"""Schemathesis against the served OpenAPI document: every operation, with valid and
invalid requests, bounded and seeded. No answer may be a server error, and every answer
must have a documented status and content type and match the documented schema.

The gateway is seeded first (a pushed file, a registered reference, an open upload
session), and the document's parameters and bodies get those real values as examples,
so that reads hit existing versions and writes reach the service layer; the fuzzing
phase goes on from there with generated values.

The local store's blob endpoint is fuzzed like the rest: its examples are real signed
URLs (a part upload and a pack read, answered 200); a generated request that does not
carry a signed URL exactly as it was signed is refused 4xx (400, 403, 404, 405).

Reproducible: a fixed seed, derandomized generation and no example database, so a run
draws the same requests every time. ``CHUNKYARD_FUZZ_EXAMPLES`` and
``CHUNKYARD_FUZZ_SEED`` widen a local run; CI uses the defaults.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events

from chunkyard import Client
from conftest import RunningGateway, begin_pack, random_bytes, start_gateway
from http_source import Source

pytestmark = pytest.mark.usefixtures("loopback_only")

SEED = int(os.environ.get("CHUNKYARD_FUZZ_SEED", "20240611"))
MAX_EXAMPLES = int(os.environ.get("CHUNKYARD_FUZZ_EXAMPLES", "30"))
#: the body of the part upload the examples make (ASCII, so that it can be an example)
PART = b"chunkyard fuzz part " * 5
#: the id of the pack that part belongs to (it never is one: completing it fails)
BEGUN = "ab" * 32
SESSION_OPS = ("missing", "packs", "complete", "commit")
#: schemathesis's checks, all but one: not_a_server_error, status_code_conformance,
#: content_type_conformance, response_schema_conformance, response_headers_conformance,
#: negative_data_rejection, unsupported_method, allow_header_conformance,
#: missing_required_header, use_after_free, ensure_resource_availability, ignored_auth
#: (a request without the token must be refused 401), object_level_authorization; off:
#: positive_data_acceptance, see below
CONFIG: dict[str, Any] = {
    "seed": SEED,
    "workers": 1,
    "generation": {
        "mode": "all",  # valid and invalid requests
        "max-examples": MAX_EXAMPLES,
        "deterministic": True,
        "database": "none",
    },
    "checks": {
        # A request valid by the document may still be refused 4xx for what no JSON
        # Schema says: a 'file' commit needs exactly one file, a reference version is
        # not reconstructed, a URI needs a supported scheme, the index must be base64, a
        # checksum store needs one checksum per part, and JSON integers are written
        # without a fraction (msgspec is strict: 3.0 is not an int).
        "positive_data_acceptance": {"enabled": False},
        # invalid requests: every refusal the gateway gives (413: a body over its limit)
        "negative_data_rejection": {
            "expected-statuses": ["400", "401", "403", "404", "405", "409", "413", "422"]
        },
    },
    "operations": [
        {
            # The stateful phase takes a pack id from a begin answer into a completion.
            # On a store with part checksums the first begin only answers the part plan
            # ("need_checksums"): nothing is begun, so completing it is rightly 404.
            "include-path": "/v1/sessions/{sid}/packs/{pack}/complete",
            "checks": {"ensure_resource_availability": {"enabled": False}},
        }
    ],
}


@pytest.fixture(scope="module")
def source() -> Iterator[Source]:
    src = Source()
    yield src
    src.close()


@pytest.fixture(scope="module")
def fuzzed(source: Source, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway with auth, and an admin token for the fuzzer: the document declares
    bearer auth, and schemathesis checks that requests without it are refused."""
    from chunkyard.repository.tokens import offline

    data = tmp_path_factory.mktemp("fuzz")
    gw, server, thread = start_gateway(
        data,
        CHUNKYARD_AUTH="1",
        CHUNKYARD_REF_ALLOW=f"{source.url}/files/",
        CHUNKYARD_REF_ALLOW_PRIVATE_NETWORKS="1",
    )
    made = asyncio.run(offline(gw.settings.db_url, "create", scopes=["admin"]))
    gw.token = made["token"]  # type: ignore[attr-defined]
    yield gw
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def seeded(fuzzed: RunningGateway, source: Source, tmp_path_factory) -> dict[str, Any]:
    """Real objects for the examples: a stored version, a reference, an open session
    with a pack begun in it, and signed blob URLs (a part upload and a pack read)."""
    f = tmp_path_factory.mktemp("fuzz-src") / "weights.bin"
    f.write_bytes(random_bytes(100_000, seed=7))
    uri = source.put("/files/ref.bin", random_bytes(50_000, seed=8))
    auth = {"authorization": f"Bearer {fuzzed.token}"}
    with Client(fuzzed.url, token=fuzzed.token) as c:
        c.push(f, "team/model", tags={"branch": "main"})
        c.ref("team/ref", uri)
    with httpx.Client(base_url=fuzzed.url, headers=auth) as api:
        # a session for each operation on sessions (a commit closes its session)
        sessions = {}
        for op in SESSION_OPS:
            r = api.post("/v1/sessions", json={"name": "team/model"})
            assert r.status_code == 201, r.text
            sessions[op] = r.json()["session"]
        # a part the examples upload (the local store checks its size and BLAKE3 at once,
        # the pack's id and contents only when it is completed), in the session whose
        # completion the examples ask for
        part = begin_pack(api, sessions["complete"], BEGUN, PART)
        r = api.get("/v1/artifacts/team/model/-/versions/1/files/0/reconstruction")
        assert r.status_code == 200, r.text
        (term,) = r.json()["terms"]
        pack, read = term["pack"], term["url"]["url"]
    return {
        "uri": uri,
        "sessions": sessions,
        "pack": pack,
        "put": _signed(part["url"]),
        "get": _signed(read),
    }


def _signed(url: str) -> dict[str, Any]:
    """A signed blob URL's key and query, as example values."""
    u = urlsplit(url)
    key = u.path.split("/v1/blobs/", 1)[1]
    query = {k: int(v) if k in ("exp", "part", "size") else v for k, v in parse_qsl(u.query)}
    return {"key": key, **query}


def with_examples(doc: dict[str, Any], seeded: dict[str, Any]) -> dict[str, Any]:
    """The served document plus examples naming the seeded objects."""
    doc = copy.deepcopy(doc)
    params = {
        "name": ["team/model", "team/ref"],
        "ref": ["1", "latest"],
        "index": [0],
        "alias": ["prod"],
        "tag": [["branch=main"]],
        "prefix": ["team/"],
    }
    bodies = {
        "/v1/references": {"name": "team/ref", "uri": seeded["uri"], "tags": {"k": "v"}},
        "/v1/sessions": {"name": "team/model"},
        "/v1/artifacts/{name}/-/aliases/{alias}": {"version": 1},
        "/v1/artifacts/{name}/-/versions/{ref}/reconstructions": {"files": [0]},
        "/v1/sessions/{sid}/packs": {"pack": seeded["pack"], "size": 100},
        "/v1/sessions/{sid}/packs/{pack}/complete": {"parts": [{"number": 1}]},
    }
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            values = params
            if path == "/v1/blobs/{key}":
                values = {k: [v] for k, v in seeded[method].items()}
            elif path.startswith("/v1/sessions/{sid}/"):
                op_name = path.rsplit("/", 1)[1]
                values = {"sid": [seeded["sessions"][op_name]], "pack": [BEGUN]}
            for p in op["parameters"]:
                if p["name"] in values:
                    p["examples"] = {
                        f"seeded{i}": {"value": v} for i, v in enumerate(values[p["name"]])
                    }
            content = op.get("requestBody", {}).get("content", {})
            if path in bodies and "application/json" in content:  # not its GET or DELETE
                content["application/json"]["examples"] = {"seeded": {"value": bodies[path]}}
            binary = {"/v1/blobs/{key}": PART, "/v1/sessions/{sid}/missing": b"0" * 32}
            if path in binary and "application/octet-stream" in content:
                value = binary[path].decode()
                content["application/octet-stream"]["examples"] = {"seeded": {"value": value}}
    return doc


@pytest.fixture(scope="module")
def api_schema(fuzzed: RunningGateway, seeded: dict[str, Any]):
    r = httpx.get(f"{fuzzed.url}/openapi.json")
    assert r.status_code == 200
    config = SchemathesisConfig.from_dict(
        {**CONFIG, "base-url": fuzzed.url, "headers": {"Authorization": f"Bearer {fuzzed.token}"}}
    )
    return schemathesis.openapi.from_dict(with_examples(r.json(), seeded), config=config)


def _short(text: str, n: int = 400) -> str:
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def test_every_operation(api_schema):
    """The engine runs the examples, coverage, fuzzing and stateful phases, as the
    schemathesis CLI does (its pytest plugin is not used: it cannot name subtests under
    pytest 9.2)."""
    failures: list[str] = []
    tested: set[str] = set()
    statuses: dict[str, Counter[int]] = {}
    for event in schemathesis.engine.from_schema(api_schema).execute():
        if isinstance(event, events.ScenarioFinished):
            rec = event.recorder
            tested.add(rec.label)
            seen = statuses.setdefault(rec.label, Counter())
            seen.update(i.response.status_code for i in rec.interactions.values() if i.response)
            for case_id, checks in rec.checks.items():
                for check in checks:
                    if check.status != Status.FAILURE or check.failure_info is None:
                        continue
                    info = check.failure_info
                    answer = rec.interactions.get(case_id)
                    got = ""
                    if answer is not None and answer.response is not None:
                        text = answer.response.content.decode("utf-8", "replace")
                        got = f"-> {answer.response.status_code} {_short(text, 300)}"
                    failures.append(
                        f"{rec.label} [{check.name}] {info.failure.title}: "
                        f"{_short(info.failure.message, 300)}\n  "
                        + "\n  ".join(_short(line) for line in info.code_sample.splitlines())
                        + f"\n  {got}"
                    )
        elif isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: {_short(event.info.format(), 2000)}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            failures += [f.title for f in event.failures]
    for label, seen in sorted(statuses.items()):  # shown with -s: what the run reached
        print(f"{label}: {dict(sorted(seen.items()))}")
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)
    operations = {
        f"{m.upper()} {p}" for p, ops in api_schema.raw_schema["paths"].items() for m in ops
    }
    assert operations <= tested
