"""The durable buffer: staging (group commit) in front of a SQLite ring buffer of chunks."""
