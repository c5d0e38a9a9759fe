"""Where each event goes: the topic (Kafka), subject (NATS) or stream key (Redis) of a table.

A template such as ``{prefix}.{schema}.{table}`` (the default, Debezium's naming) is
filled per table once and cached. The substituted names are made safe for the broker
first; the template's own characters are kept as written:

- Kafka topics allow ``[A-Za-z0-9._-]`` only: any other character becomes ``_``.
- NATS subjects split on ``.`` and reserve ``*``, ``>`` and whitespace: in a name,
  anything but ``[A-Za-z0-9_-]`` becomes ``_`` (so a table ``a.b`` stays one token).
- Redis keys are binary-safe: names are used as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from cdc.events import TableId

_KAFKA_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")
_NATS_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")


def kafka_name(name: str) -> str:
    """`name` as a legal part of a Kafka topic name."""
    return _KAFKA_UNSAFE.sub("_", name)


def nats_token(name: str) -> str:
    """`name` as one token of a NATS subject (never empty)."""
    return _NATS_UNSAFE.sub("_", name) or "_"


def redis_name(name: str) -> str:
    """Redis keys take any bytes: `name` as it is."""
    return name


class Routing:
    """Fills the topic templates of one sink; see the module docstring."""

    def __init__(
        self,
        *,
        table_template: str,
        transaction_template: str,
        prefix: str,
        source: str,
        database: str,
        safe: Callable[[str], str],
    ) -> None:
        self._table_template = table_template
        self._safe = safe
        self._common = {"prefix": prefix, "source": safe(source), "database": safe(database)}
        self._topics: dict[TableId, str] = {}
        self.transaction_topic = transaction_template.format(**self._common, schema="", table="")

    def topic(self, table: TableId) -> str:
        """The topic (subject, stream key) of `table`'s events."""
        topic = self._topics.get(table)
        if topic is None:
            topic = self._topics[table] = self._table_template.format(
                **self._common, schema=self._safe(table.schema), table=self._safe(table.table)
            )
        return topic
