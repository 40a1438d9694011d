"""The SQL store: runs and their steps committed under (run id, step), sessions, migrations, and
the per-step tool-result cache in Redis."""
