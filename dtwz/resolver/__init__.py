"""The resolver: names and locations across the cluster (DESIGN.md section 3). Not built yet."""
