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
hold"); a loss the sink warns about must come with its warning in the daemon's log, once per
table and column and job start (`compare.check_logged_losses`). Any other difference is a
failure, and so is an unexpected exit of the daemon, a traceback in its log, or a job that
retries the same error without progress.

A seed replays exactly (as long as `families` and `workload` are unchanged):

- ``CDC_DIFFERENTIAL_SEEDS=3 pytest integration/test_differential.py -k seed_3`` (both engines;
  ``-k "postgres and seed_3"`` for one), or
- ``python -m bench.soak --seed 3`` (``--engine``, ``--sinks``, ``--families``, ``--faults`` narrow
  it down; ``--keep`` keeps the sinks and the daemon's log).

docs/types.md, "Values a sink cannot hold", says the same for users.
"""
