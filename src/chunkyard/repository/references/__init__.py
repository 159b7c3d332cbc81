"""Reference versions: external objects registered as a version without copying them.

Registering (:mod:`.registration`) lists (or HEADs) the source and records one pin per
object (FORMAT.md, "Reference versions"); it reads no object bytes unless asked to
hash. Hashing (:mod:`.indexing`) streams each object once, a few objects at a time,
and records its BLAKE3 digest; indexing also records its chunks, so that the object
becomes a chunk source: the missing-chunk query then answers those chunks as present,
manifests name them like any pack's, and readers (:mod:`.reading`) fetch them from
the source through pinned URLs, checking every chunk id as always.
"""
