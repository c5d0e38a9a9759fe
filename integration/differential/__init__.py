"""Differential testing of cdc against external oracles (issue #15).

A seeded generator (`workload`) writes random transactions of every type family into a
disposable source; cdc (the real ``cdc run`` daemon, killed and restarted at random points,
with a source restart in between) carries them into every sink at once, and each sink is
compared row by row (`compare`) with an oracle that cdc's code has no part in (`oracles`):

- PostgreSQL: the source's native logical replication into a second disposable server
  (``CREATE SUBSCRIPTION``), itself checked against the source's own ``SELECT``;
- MySQL/MariaDB: the source's own ``SELECT``.

Each sink's rows go through a normalisation that implements the documented type mapping
(docs/types.md, docs/mysql.md, docs/delta.md, docs/warehouse.md) plus the list of values a
sink cannot hold (`compare.LOSSES`, documented in docs/types.md, "Values a sink cannot
hold"): any other difference is a failure. A seed replays exactly:
``pytest integration/test_differential.py -k seed_3`` or ``python -m bench.soak --seed 3``.
"""
