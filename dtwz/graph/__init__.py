"""The object-graph service (DESIGN.md section 5). Not built yet."""
