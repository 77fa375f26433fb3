"""Code at the data, as a node runs it (docs/GRAPH.md): ``runner`` keeps a worker
process per node and talks to it over a socket pair; ``worker`` is that process,
whose ``api`` reads the node's objects in place and everything else through the
node like any client. Where a function runs is decided in ``dtwz.graph.execute``."""
