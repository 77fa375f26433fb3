"""The resolver: where objects live and what names mean, across the cluster.

``membership`` (gossiped membership and failure detection, sans-I/O),
``locations`` (the location directory: which node homes an object),
``names`` (the root, the walk of a path, the name cache; path syntax is
``dtwz.format.names``), ``directory_objects`` (the bytes of a directory object)
and ``namespace`` (``Namespace``: resolution and directory changes as a node
serves them). docs/NAMES.md describes the namespace, docs/PROTOCOL.md the
messages."""
