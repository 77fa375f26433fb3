"""The object service: objects across the cluster, as one node reads, writes and
serves them, both as a requester and as their home (docs/ARCHITECTURE.md).

``objects`` (``ObjectService``, the facade the node, the resolver and the graph
service use), ``home`` (this node as home: transactions, fetches served,
creation), ``fetching`` (copies and ranges fetched from homes), ``writes``
(admission of writes, invalidation of copies), ``applied`` (at most once per
transaction ID) and ``cluster`` (``Cluster``: what the service needs of its
node). No sockets: messages go through ``Cluster.request`` (docs/PROTOCOL.md)."""
