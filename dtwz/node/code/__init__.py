"""Code at the data, as a node runs it (docs/GRAPH.md; who may, and with whose rights:
docs/SECURITY.md §11): ``runner`` keeps a few confined worker processes and shares
them fairly between callers; ``worker`` is such a process, which forks one process
per call whose ``api`` acts as the caller; ``isolation`` is how a worker confines
itself; ``host`` is what a call gets of its node. Where a function runs is decided
in ``dtwz.graph.execute``."""
