"""The HTTP API's boundary: the served OpenAPI document covers every route and carries
the constraints the server enforces; hostile values get a 400 with a stable code, never
a 500; a method a path does not take gets 405 with ``Allow``."""

from __future__ import annotations

import re

import httpx
import pytest

from chunkyard.server.app import ENDPOINTS

BIG = str(2**63)
HUGE = "9" * 40


@pytest.fixture(scope="module")
def api(gateway):
    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def doc(api) -> dict:
    r = api.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


@pytest.fixture(scope="module")
def pushed(gateway, tmp_path_factory) -> str:
    """An artifact with one version, for the read routes."""
    src = tmp_path_factory.mktemp("api") / "f.bin"
    src.write_bytes(b"x" * 70_000)
    with gateway.client() as c:
        c.push(src, "api/model")
    return "api/model"


def _routes(app_routes) -> set[tuple[str, str]]:
    out = set()
    for route in app_routes:
        path = re.sub(r"{([a-z_]+)(:[a-z]+)?}", r"{\1}", route.path)
        out |= {(m, path) for m in route.methods if m != "HEAD"}
    return out


def test_every_route_is_in_the_document(gateway, doc):
    from chunkyard.server.app import create_app

    app = create_app(gateway.settings)
    served = _routes(app.routes)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    assert len(served) == len(ENDPOINTS)
    for path, ops in doc["paths"].items():
        declared = set(re.findall(r"{([a-z_]+)}", path))
        for op in ops.values():
            params = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert params == declared, (path, params)


def test_the_document_carries_the_constraints(doc):
    schemas = doc["components"]["schemas"]
    assert schemas["CreateSession"]["properties"]["name"]["pattern"].startswith("^[A-Za-z0-9]")
    files = schemas["Commit"]["properties"]["files"]
    assert files["maxItems"] == 1_000_000
    size = schemas["CommitFile"]["properties"]["size"]
    assert size["minimum"] == 0 and size["maximum"] == 2**63 - 1
    assert schemas["BeginPack"]["properties"]["size"]["maximum"] == 64 * 1024 * 1024
    missing = doc["paths"]["/v1/sessions/{sid}/missing"]["post"]["requestBody"]["content"]
    assert "application/octet-stream" in missing
    ref = next(
        p
        for p in doc["paths"]["/v1/artifacts/{name}/-/versions/{ref}"]["get"]["parameters"]
        if p["name"] == "ref"
    )
    assert "pattern" in ref["schema"]
    blob = doc["paths"]["/v1/blobs/{key}"]
    assert {p["name"] for p in blob["put"]["parameters"]} >= {"key", "sig", "exp", "size"}


def test_the_document_says_what_the_server_accepts(api, doc):
    """Found by the schema fuzzer (test_fuzz.py): what the server takes and answers
    beyond the models themselves is in the document too."""
    # an empty optional integer in a query is its default
    (limit,) = (
        p for p in doc["paths"]["/v1/artifacts"]["get"]["parameters"] if p["name"] == "limit"
    )
    assert {"type": "string", "maxLength": 0} in limit["schema"]["anyOf"]
    assert api.get("/v1/artifacts?limit=").status_code == 200
    # no body is the object {}: required only where a field is
    ops = doc["paths"]
    assert not ops["/v1/sessions/{sid}/packs/{pack}/complete"]["post"]["requestBody"]["required"]
    assert ops["/v1/sessions/{sid}/commit"]["post"]["requestBody"]["required"]
    # a part upload answers with an ETag and no body
    put = ops["/v1/blobs/{key}"]["put"]["responses"]["200"]
    assert "content" not in put and put["headers"]["ETag"]["required"]


def error(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return body["error"]["code"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/artifacts/api/model/-/versions/" + BIG,
        "/v1/artifacts/api/model/-/versions/" + HUGE,
        "/v1/artifacts/api/model/-/versions/³",
        "/v1/artifacts/api/model/-/versions/1²",
        "/v1/artifacts/api/model/-/versions/١",
        "/v1/artifacts/api/model/-/versions?cursor=" + BIG,
        "/v1/artifacts/api/model/-/versions?cursor=³",
        "/v1/artifacts/api/model/-/versions?limit=-1",
        "/v1/artifacts/api/model/-/versions/1/files/" + BIG + "/reconstruction",
        "/v1/artifacts/api/model/-/versions/1/files/³/reconstruction",
        "/v1/artifacts/api/model/-/versions/1/files/0/reconstruction?start=" + HUGE,
        "/v1/artifacts/api/model/-/versions/1/files/0/reconstruction?length=1_000",
        "/v1/artifacts?limit=" + BIG,
        "/v1/artifacts/a%00b/-/versions/1",
    ],
)
def test_out_of_range_and_unicode_numbers_are_400(api, pushed, path):
    r = api.get(path)
    assert r.status_code == 400, (r.status_code, r.text)
    assert error(r) in ("bad_request", "invalid_name")


@pytest.mark.parametrize(
    "body",
    [
        {"version": 2**63},
        {"version": 10**40},
        {"version": 1, "expect": 2**63},
        {"version": "³"},
        {"version": -1},
        {"version": True},
        {"version": 1.5},
    ],
)
def test_out_of_range_alias_versions_are_400(gateway, api, pushed, body):
    before = gateway.snapshot()
    r = api.put("/v1/artifacts/api/model/-/aliases/prod", json=body)
    assert r.status_code == 400, r.text
    assert gateway.snapshot() == before


def test_deeply_nested_json_is_400(gateway, api, pushed):
    before = gateway.snapshot()
    deep = b"[" * 20_000 + b"]" * 20_000
    for path, raw in [
        ("/v1/sessions", deep),
        ("/v1/sessions", b'{"name": ' + deep + b"}"),
        ("/v1/artifacts/api/model/-/versions/1/tags", b'{"tags": {"a": ' + deep + b"}}"),
        ("/v1/references", b'{"name": "a", "uri": "s3://b/k", "tags": ' + deep + b"}"),
    ]:
        r = api.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, r.status_code, r.text[:200])
    s = api.post("/v1/sessions", json={"name": "api/model"}).json()["session"]
    commit = b'{"layout": "file", "files": [{"path": "f", "size": 1, "digest": ' + deep + b"}]}"
    r = api.post(
        f"/v1/sessions/{s}/commit", content=commit, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert gateway.snapshot() == before


def test_a_commit_with_huge_numbers_is_400(gateway, api, pushed):
    s = api.post("/v1/sessions", json={"name": "api/model"}).json()["session"]
    before = gateway.snapshot()
    for f in (
        {"path": "f", "size": 2**63, "digest": "0" * 64, "terms": []},
        {"path": "f", "size": 1, "digest": "0" * 64, "terms": [["a" * 64, 0, 2**64]]},
        {"path": "f", "size": 1, "digest": "0" * 64, "from_version": 2**63},
    ):
        r = api.post(f"/v1/sessions/{s}/commit", json={"layout": "file", "files": [f]})
        assert r.status_code == 400, r.text
        assert error(r) == "invalid_manifest"
    r = api.post(f"/v1/sessions/{s}/packs", json={"pack": "a" * 64, "size": 2**63})
    assert r.status_code == 400 and error(r) == "bad_request"
    assert gateway.snapshot() == before


def test_unknown_fields_are_refused(api, pushed):
    r = api.post("/v1/sessions", json={"name": "api/model", "nmae": "typo"})
    assert r.status_code == 400 and "nmae" in r.json()["error"]["message"]


def test_wrong_method_is_405_with_allow(api):
    r = api.delete("/v1/sessions")
    assert r.status_code == 405 and error(r) == "method_not_allowed"
    assert r.headers["allow"] == "POST"
    r = api.post("/v1/blobs/packs/aa/" + "a" * 64)
    assert r.status_code == 405
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "PUT"}


def test_health_discloses_no_paths(api):
    body = api.get("/v1/health").json()
    assert body["status"] == "ok" and "store" not in body
