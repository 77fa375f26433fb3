"""Code at the data, as a node runs it (docs/GRAPH.md; who may, and with whose rights:
docs/SECURITY.md §11): ``runner`` keeps a few confined worker processes and shares
them fairly between callers, ``processes`` starts, speaks to and reaps them, and
``channel`` serves one call's channel; ``worker`` is such a process, which forks one
process per call whose ``api`` (``dataclient``) acts as the caller; ``frames`` is
the protocol between the two sides; ``isolation`` is how a worker confines itself;
``host`` is what a call gets of its node. Where a function runs is decided in
``dtwz.graph.execute``."""
