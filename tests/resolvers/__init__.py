"""Helpers of tests/test_resolvers.py: real resolvers in front of dnsd (servers), the tap between
them (tap, traffic), answer comparison (answers), and CoreDNS's forward plugin re-enacted (coredns)."""
