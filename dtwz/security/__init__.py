"""Security formats (docs/SECURITY.md): identities and key objects (``keys``),
capabilities and their delegation chains (``capabilities``), signed and
session-authenticated requests (``auth``), and a cluster's key files on disk
(``keyfiles``). Pure but for ``keyfiles``, which reads and writes files: the
node's checks that use these live in ``dtwz.node.access``."""
