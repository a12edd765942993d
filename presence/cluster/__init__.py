"""Cluster mode: several host boxes sharing one Redis (docs/cluster.md)."""
