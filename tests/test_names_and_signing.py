import pytest

from chunkyard import signing
from chunkyard.errors import BadSignature, InvalidName, UrlExpired
from chunkyard.names import check_alias, check_name, check_path, parse_ref


@pytest.mark.parametrize("name", ["a", "team/project/model", "t-1/p_2/m.3", "A9/b"])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/abs",
        "a//b",
        "a/../b",
        "..",
        "a/./b",
        "a/",
        "a\x00b",
        "a\nb",
        "x" * 300,
        "-/a",
        "a/-",
        "a b",
        ".hidden",
        "a\\b",
        "/".join(["a"] * 17),
    ],
)
def test_bad_names(name):
    with pytest.raises(InvalidName):
        check_name(name)


def test_refs_and_aliases():
    assert parse_ref("a/b") == ("a/b", None)
    assert parse_ref("a/b@3") == ("a/b", 3)
    assert parse_ref("a/b@latest") == ("a/b", None)
    assert parse_ref("a/b:champion") == ("a/b", "champion")
    for bad in ("latest", "1abc", "", "a" * 65):
        with pytest.raises(InvalidName):
            check_alias(bad)
    with pytest.raises(InvalidName):
        parse_ref("a/b@x1")


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a//b", "a/./b", "a\\b", ""])
def test_bad_paths(path):
    with pytest.raises(InvalidName):
        check_path(path)


def test_signatures():
    params = signing.sign(b"k", "PUT", "/v1/blobs/x", {"part": "1"}, 60, now=1000)
    signing.verify(b"k", "PUT", "/v1/blobs/x", params, now=1000)
    with pytest.raises(BadSignature):
        signing.verify(b"other", "PUT", "/v1/blobs/x", params, now=1000)
    with pytest.raises(BadSignature):
        signing.verify(b"k", "PUT", "/v1/blobs/y", params, now=1000)
    with pytest.raises(BadSignature):
        signing.verify(b"k", "PUT", "/v1/blobs/x", {**params, "part": "2"}, now=1000)
    with pytest.raises(UrlExpired):
        signing.verify(b"k", "PUT", "/v1/blobs/x", params, now=2000)
