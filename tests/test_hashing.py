from chunkyard import hashing
from chunkyard.client.packer import hash_file
from conftest import random_bytes


def test_parallel_chunk_ids_equal_the_sequential_cut(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(random_bytes(12 * 1024 * 1024 + 7, seed=95))
    sequential = hashing.chunk_ids(path, parallel=False)
    assert [c[2] for c in sequential] == hash_file(path).chunk_ids
    assert hashing.chunk_ids(path, parallel=True) == sequential
    monkeypatch.setattr(hashing, "SYNC_MARGIN", 1)  # no common cut: the fallback path
    assert hashing.chunk_ids(path, parallel=True) == sequential


def test_tiny_and_empty_files(tmp_path):
    (tmp_path / "e").write_bytes(b"")
    (tmp_path / "t").write_bytes(b"abc")
    assert hashing.chunk_ids(tmp_path / "e") == []
    assert [(o, n) for o, n, _ in hashing.chunk_ids(tmp_path / "t")] == [(0, 3)]
