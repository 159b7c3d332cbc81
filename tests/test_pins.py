"""Reference URIs, the allow-list rule, pins and the drift rule (pure, no I/O)."""

import pytest

from chunkyard.config import parse_ref_allow
from chunkyard.errors import InvalidReference, ReferenceDrifted, ReferenceNotAllowed
from chunkyard.pins import (
    Pin,
    check_allowed,
    drift,
    drifted,
    make_pin,
    parse_uri,
    pins_digest,
    response_drift,
)


@pytest.mark.parametrize(
    ("text", "scheme", "bucket", "key", "prefix"),
    [
        ("s3://weights/llama/model.safetensors", "s3", "weights", "llama/model.safetensors", False),
        ("s3://weights/llama/", "s3", "weights", "llama/", True),
        ("s3://weights", "s3", "weights", "", True),
        ("S3://weights/a", "s3", "weights", "a", False),
        ("gs://b/x/y", "gs", "b", "x/y", False),
        ("az://container/dir/", "az", "container", "dir/", True),
        (
            "https://Models.Example.com:443/m/w.bin",
            "https",
            "models.example.com",
            "/m/w.bin",
            False,
        ),
        ("http://127.0.0.1:8000/w.bin?sig=1", "http", "127.0.0.1:8000", "/w.bin?sig=1", False),
        ("http://[::1]:9/w", "http", "[::1]:9", "/w", False),
    ],
)
def test_parse_uri(text, scheme, bucket, key, prefix):
    u = parse_uri(text)
    assert (u.scheme, u.bucket, u.key, u.is_prefix) == (scheme, bucket, key, prefix)
    assert parse_uri(str(u)) == u  # normal form is a fixed point


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ftp://host/x",
        "file:///etc/passwd",
        "s3://",
        "s3://Bad_Bucket!/x",
        "s3://b/a/../c",
        "s3://b/a//c",
        "s3://b/x?versionId=1",
        "https://user:pw@host/x",
        "https://host/x#frag",
        "https://host/dir/",
        "https://host/a b",
        "https://host/a\x00b",
        "https:///x",
        None,
        17,
    ],
)
def test_parse_uri_refuses(text):
    with pytest.raises(InvalidReference):
        parse_uri(text)


def test_allow_list_matches_at_boundaries():
    allow = parse_ref_allow(" s3://weights , https://Models.Example.com/public/,gs:// ")
    assert allow == ("s3://weights", "https://models.example.com/public/", "gs://")
    for ok in (
        "s3://weights/x",
        "s3://weights/",
        "https://models.example.com/public/w",
        "gs://a/b",
    ):
        check_allowed(parse_uri(ok), allow)
    for bad in (
        "s3://weights2/x",
        "s3://other/x",
        "https://models.example.com/private/w",
        "https://models.example.com.evil.net/public/w",
        "az://weights/x",
    ):
        with pytest.raises(ReferenceNotAllowed):
            check_allowed(parse_uri(bad), allow)
    with pytest.raises(ReferenceNotAllowed):  # nothing configured: nothing allowed
        check_allowed(parse_uri("s3://weights/x"), ())
    with pytest.raises(ValueError):
        parse_ref_allow("ftp://x/")


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        # IPv4 in the notations the C library accepts: one dotted quad
        ("http://0177.0.0.1/f", "http://127.0.0.1/f"),
        ("http://0x7f.1/f", "http://127.0.0.1/f"),
        ("http://0X7F.0.0.0x1/f", "http://127.0.0.1/f"),
        ("http://2130706433/f", "http://127.0.0.1/f"),
        ("http://127.1/f", "http://127.0.0.1/f"),
        ("http://10.1.258/f", "http://10.1.1.2/f"),
        ("http://0/f", "http://0.0.0.0/f"),
        ("http://0x/f", "http://0.0.0.0/f"),
        ("http://0xffffffff/f", "http://255.255.255.255/f"),
        ("http://0251.0376.0251.0376/f", "http://169.254.169.254/f"),
        # IPv6: compressed, lower case; IPv4-mapped in dotted form
        ("http://[::FFFF:127.0.0.1]/f", "http://[::ffff:127.0.0.1]/f"),
        ("http://[0:0:0:0:0:ffff:7f00:1]:8080/f", "http://[::ffff:127.0.0.1]:8080/f"),
        ("http://[2001:DB8:0::1]/f", "http://[2001:db8::1]/f"),
        # names: IDNA 2008 with the UTS 46 mapping, as ASCII
        ("https://B\u00dcCHER.example/f", "https://xn--bcher-kva.example/f"),
        ("https://\u00df.de/f", "https://xn--zca.de/f"),
        ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/f", "http://127.0.0.1/f"),
        ("http://127\u30020\u30020\u30021/f", "http://127.0.0.1/f"),
        ("http://under_score.example/f", "http://under_score.example/f"),
        ("http://123.example/f", "http://123.example/f"),
        # ports: no default, no leading zeros, an empty one is none
        ("https://h.example:0443/f", "https://h.example/f"),
        ("http://h.example:/f", "http://h.example/f"),
        ("http://h.example:08080/f", "http://h.example:8080/f"),
    ],
)
def test_http_hosts_have_one_normal_form(text, normal):
    assert str(parse_uri(text)) == normal
    assert str(parse_uri(normal)) == normal


@pytest.mark.parametrize(
    "text",
    [
        "http://0999.0.0.1/f",
        "http://09.1/f",
        "http://1.2.3.4.5/f",
        "http://256.1.1.1/f",
        "http://1.16777216/f",
        "http://4294967296/f",
        "http://foo.0x7f/f",
        "http://" + "9" * 5000 + "/f",
        "http://" + "a" * 64 + ".example/f",
        "http://" + "a." * 127 + "example/f",
        "http://a..b/f",
        "http://.a/f",
        "http://a./f",
        "http://-a.example/f",
        "http://a-.example/f",
        "http://ex%41mple.com/f",
        "http://\u2603.net/f",
        "http://\u2024.com/f",
        "http://a\uff03b/f",
        "http://h.example:0/f",
        "http://h.example:65536/f",
        "http://h.example:+80/f",
        "http://h.example:\u0668\u0660/f",
        "http://[fe80::1%25eth0]/f",
        "http://[v1.x]/f",
        "http://[::1]x/f",
        "http://[::ffff:0177.0.0.1]/f",
        "http://::1/f",
        "http://h.example/a/..;/b",
        "http://h.example/a/%2e%2e/b",
        "http://h.example/a\\b",
    ],
)
def test_http_hosts_that_are_refused(text):
    with pytest.raises(InvalidReference):
        parse_uri(text)


def test_redirect_targets():
    """A redirect target may end with '/' or hold empty segments; never '..'."""
    assert str(parse_uri("https://cdn.example/a//b/", redirect=True)) == (
        "https://cdn.example/a//b/"
    )
    for bad in ("https://cdn.example/a/../b", "https://cdn.example/%2E%2E/b", "s3://b/k/.."):
        with pytest.raises(InvalidReference):
            parse_uri(bad, redirect=True)


def test_allow_list_hosts_are_normalised_as_uris_are():
    allow = parse_ref_allow("http://0x7f.1:8080/files/,HTTPS://B\u00fccher.Example:443/,https://")
    assert allow == ("http://127.0.0.1:8080/files/", "https://xn--bcher-kva.example/", "https://")
    check_allowed(parse_uri("http://0177.0.0.1:8080/files/x"), allow)
    check_allowed(parse_uri("https://b\u00fccher.example/x"), allow)
    with pytest.raises(ReferenceNotAllowed):
        check_allowed(parse_uri("http://127.0.0.1:8081/files/x"), allow[:2])
    with pytest.raises(ValueError):
        parse_ref_allow("http://a..b/")
    with pytest.raises(ValueError):
        parse_ref_allow("https://h.example:0/")


def test_a_redirect_outside_the_allow_list_names_the_hop():
    with pytest.raises(ReferenceNotAllowed) as caught:
        check_allowed(
            parse_uri("https://other.example/x"),
            ("https://h.example/",),
            redirected_from="https://h.example/f",
        )
    assert caught.value.detail == {
        "uri": "https://other.example/x",
        "redirected_from": "https://h.example/f",
    }
    assert "https://h.example/f redirects to https://other.example/x" in caught.value.message


def test_pins_and_drift():
    p = make_pin("s3://b/k", 10, '"abc"', "null", "2024-01-01")
    assert p.etag == "abc" and p.version_id is None  # "null" pins nothing
    assert drift(p, 10, "abc") == "ok"
    assert drift(p, 10, '"abc"') == "ok"
    assert drift(p, 10, "abd") == "changed"
    assert drift(p, 11, "abc") == "changed"
    assert drift(p, None) == "missing"
    v = make_pin("s3://b/k", 10, "abc", "v1", None)
    assert drift(v, 10, "abc", "v1") == "ok"
    assert drift(v, 10, "abc", "v2") == "changed"  # a store that ignored the version asked
    h = make_pin("https://h/w", 10, "", None, "Mon, 01 Jan 2024 00:00:00 GMT")
    assert drift(h, 10, "", None, "Mon, 01 Jan 2024 00:00:00 GMT") == "ok"
    assert drift(h, 10, "", None, "Tue, 02 Jan 2024 00:00:00 GMT") == "changed"
    with pytest.raises(InvalidReference):  # nothing to pin with
        make_pin("https://h/w", 10, "", None, None)
    # pin ids: stable, and sensitive to everything that pins
    assert p.id == make_pin("s3://b/k", 10, "abc", None, "other date").id
    assert len({p.id, v.id, h.id, make_pin("s3://b/k", 10, "abc", "v2", None).id}) == 4


def test_response_drift():
    p = Pin("s3://b/k", 5, "abc")
    assert response_drift(p, 200, {"content-length": "5", "etag": '"abc"'}) is None
    assert response_drift(p, 412, {}) == "changed"
    assert response_drift(p, 404, {}) == "missing"
    assert response_drift(p, 200, {"content-length": "6"}) == "changed"
    assert response_drift(p, 200, {"etag": '"zzz"'}) == "changed"
    assert response_drift(p, 206, {"content-range": "bytes 0-1/7"}) == "changed"
    assert response_drift(p, 206, {"content-range": "bytes 0-1/5"}) is None
    assert response_drift(p, 500, {}) is None  # an error, not drift
    g = Pin("gs://b/k", 5, "CJjw", "123")
    assert response_drift(g, 200, {"etag": '"md5-of-xml-api"'}) is None
    assert response_drift(g, 200, {"x-goog-generation": "124"}) == "changed"
    err = drifted(p, "missing", path="k")
    assert isinstance(err, ReferenceDrifted) and err.code == "reference_drifted"
    assert "s3://b/k" in err.message and err.detail["path"] == "k"


def test_pins_digest_is_not_a_tree_digest():
    files = [("b", Pin("s3://x/b", 1, "e1")), ("a", Pin("s3://x/a", 2, "e2"))]
    d = pins_digest(files)
    assert d == pins_digest(list(reversed(files))) and len(d) == 64
    assert d != pins_digest([("b", Pin("s3://x/b", 1, "e3")), files[1]])
