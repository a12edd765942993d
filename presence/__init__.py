"""presence: a Twisted server that keeps people reachable over plain HTTP."""
