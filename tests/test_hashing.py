from chunkyard import hashing
from chunkyard.fingerprint import fingerprint
from conftest import random_bytes


def test_parallel_chunk_ids_equal_the_sequential_cut(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(random_bytes(12 * 1024 * 1024 + 7, seed=95))
    sequential = hashing.chunk_ids(path, parallel=False)
    entries: list = []
    with open(path, "rb") as f:
        fingerprint(f, path.stat().st_size, entries.extend)
    assert sequential == [(offset, n, cid) for cid, offset, n in entries]
    assert hashing.chunk_ids(path, parallel=True) == sequential
    for split in (0.01, 0.25, 0.9):  # the helper may start anywhere
        assert hashing.start_chunk_ids(path, parallel=True, split=split).result() == sequential
    monkeypatch.setattr(hashing, "SYNC_MARGIN", 1)  # no common cut: the fallback path
    assert hashing.chunk_ids(path, parallel=True) == sequential


def test_tiny_and_empty_files(tmp_path):
    (tmp_path / "e").write_bytes(b"")
    (tmp_path / "t").write_bytes(b"abc")
    assert hashing.chunk_ids(tmp_path / "e") == []
    assert [(o, n) for o, n, _ in hashing.chunk_ids(tmp_path / "t")] == [(0, 3)]


def test_an_abandoned_job_leaves_the_helper_ready_for_the_next(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(random_bytes(40 * 1024 * 1024, seed=96))
    sequential = hashing.chunk_ids(path, parallel=False)
    hashing.start_chunk_ids(path, parallel=True, split=0.1).abandon()
    assert hashing.chunk_ids(path, parallel=True) == sequential


def test_a_helper_that_died_is_replaced_and_the_result_stays_exact(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(random_bytes(20 * 1024 * 1024, seed=97))
    sequential = hashing.chunk_ids(path, parallel=False)
    assert hashing.chunk_ids(path, parallel=True) == sequential  # the helper runs
    for proc in list(hashing._executor()[0]._processes.values()):
        proc.kill()
        proc.join()
    assert hashing.chunk_ids(path, parallel=True) == sequential  # noticed, then cut here
    assert hashing.chunk_ids(path, parallel=True) == sequential  # a new helper
