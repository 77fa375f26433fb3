"""The node's HTTP API, split by resource: ``app`` builds the aiohttp application
(authentication, errors to HTTP, metrics, the route table) and is the only module
that does; ``cluster``, ``objects``, ``names``, ``keys`` and ``graph`` hold the
handlers; ``context`` is what they share, the node included as the small
interface ``NodeApi``."""
