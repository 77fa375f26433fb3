"""The node process: local object store (this package), and later the peer endpoint and HTTP API."""
