"""The reference workload: a KRX stock-signal service that proves the performance plan.

``stackwatch demo`` seeds a database, runs this service in a baseline mode (no plan
indexes, no cache, lazy loading, a serial scan) and in the optimized mode the plan
describes, drives the same load at both and prints the plan's gates side by side.
It is built only on stackwatch's public API, as a user's service would be; nothing
outside this package and the CLI imports it.
"""
