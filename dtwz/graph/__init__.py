"""The object graph: walks across nodes, prefetch, placement and co-location, code
objects and where they run, and drawings of a graph (docs/GRAPH.md).

``agent`` (``GraphAgent``: walks, prefetch, edge counts, as a node runs them),
``model`` (the schema of a walked graph), ``placement`` (co-location plans and
where code runs, pure), ``code`` (code objects), ``execute`` (``CodeExecutor``),
``stream`` (the prefetch stream's frames) and the drawings: ``render`` (terminal
tree, DOT, and every format by name), ``svg``, ``page`` (offline HTML) and
``drawing`` (what they share)."""
