"""The node process (docs/ARCHITECTURE.md): it wires the layers below into one
server, with the peer endpoint (CurveZMQ), the HTTP API split by resource, the
access checks, migration, its configuration, the launcher of local clusters and
the workers that run code at the data."""
