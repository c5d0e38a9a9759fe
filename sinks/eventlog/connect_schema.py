"""Schema-enabled JSON: Kafka Connect's ``{"schema": ..., "payload": ...}`` shape.

With ``schemas: true`` a broker sink wraps every key and value the way Kafka Connect's
``JsonConverter`` (``schemas.enable=true``) expects, so Connect sink connectors (JDBC,
Elasticsearch, ...) and Debezium's single message transforms read them with their
schema. The schema is rendered once per table schema and reused; per event it is one
join around the payload the envelope serializer already made.

Column types come from the codec's Arrow schema (the documented type mapping), so the
schema always says what the JSON holds:

=====================  ==========================================================
Arrow (event JSON)     Connect schema
=====================  ==========================================================
int8/16/32/64          ``int8`` / ``int16`` / ``int32`` / ``int64``
float32 / float64      ``float`` / ``double``
bool                   ``boolean``
binary (base64)        ``bytes`` (JsonConverter reads base64)
timestamp with zone    ``string`` named ``io.debezium.time.ZonedTimestamp`` (ISO-8601)
list                   ``array`` of the element's schema
everything else        ``string`` (decimals as exact strings, like Debezium's
                       ``decimal.handling.mode=string``; dates, times, intervals ISO)
=====================  ==========================================================

Names follow Debezium: ``<topic>.Key``, ``<topic>.Value``, ``<topic>.Envelope`` and
``io.debezium.connector.<connector>.Source``.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from cdc.events import TableChanges

_INTEGERS: Final = {"int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
                    "uint8": "int16", "uint16": "int32", "uint32": "int64", "uint64": "int64"}


def _field_type(arrow_type: Any) -> dict[str, Any]:
    """The Connect schema (without field name and optionality) of one Arrow type."""
    import pyarrow as pa

    if pa.types.is_integer(arrow_type):
        return {"type": _INTEGERS[str(arrow_type)]}
    if pa.types.is_float32(arrow_type):
        return {"type": "float"}
    if pa.types.is_floating(arrow_type):
        return {"type": "double"}
    if pa.types.is_boolean(arrow_type):
        return {"type": "boolean"}
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return {"type": "bytes"}
    if pa.types.is_timestamp(arrow_type) and arrow_type.tz is not None:
        return {"type": "string", "name": "io.debezium.time.ZonedTimestamp", "version": 1}
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return {"type": "array", "items": {**_field_type(arrow_type.value_type), "optional": True}}
    return {"type": "string"}


def _row_struct(table: TableChanges, name: str, *, key_only: bool) -> dict[str, Any]:
    arrow = table.codec.arrow_schema()
    fields = []
    for column, arrow_field in zip(table.schema.columns, arrow, strict=True):
        if key_only and not column.key:
            continue
        fields.append({**_field_type(arrow_field.type), "optional": not column.key, "field": column.name})
    return {"type": "struct", "fields": fields, "optional": not key_only, "name": name}


def _source_struct(connector: str) -> dict[str, Any]:
    def f(field: str, type_: str, optional: bool = False) -> dict[str, Any]:
        return {"type": type_, "optional": optional, "field": field}

    return {
        "type": "struct",
        "fields": [
            f("version", "string"), f("connector", "string"), f("name", "string"), f("ts_ms", "int64"),
            {"type": "string", "optional": True, "name": "io.debezium.data.Enum", "version": 1,
             "parameters": {"allowed": "true,last,false,incremental"}, "default": "false", "field": "snapshot"},
            f("db", "string"), f("schema", "string"), f("table", "string"),
            f("txId", "int64", True), f("lsn", "int64", True),
        ],
        "optional": False,
        "name": f"io.debezium.connector.{connector}.Source",
        "field": "source",
    }


TRANSACTION_BLOCK: Final = {
    "type": "struct",
    "fields": [
        {"type": "string", "optional": False, "field": "id"},
        {"type": "int64", "optional": False, "field": "total_order"},
        {"type": "int64", "optional": False, "field": "data_collection_order"},
    ],
    "optional": True,
    "name": "event.block",
    "version": 1,
    "field": "transaction",
}


def value_schema(table: TableChanges, topic: str, connector: str, *, transaction: bool) -> bytes:
    """The Connect schema of the Debezium envelope of `table` on `topic`, as JSON."""
    row = _row_struct(table, f"{topic}.Value", key_only=False)
    fields: list[dict[str, Any]] = [
        {**row, "field": "before"},
        {**row, "field": "after"},
        _source_struct(connector),
        {"type": "string", "optional": False, "field": "op"},
        {"type": "int64", "optional": True, "field": "ts_ms"},
    ]
    if transaction:
        fields.append(TRANSACTION_BLOCK)
    return orjson.dumps({"type": "struct", "fields": fields, "optional": False, "name": f"{topic}.Envelope",
                         "version": 1})


def key_schema(table: TableChanges, topic: str) -> bytes:
    """The Connect schema of `table`'s key (its key columns) on `topic`, as JSON."""
    return orjson.dumps(_row_struct(table, f"{topic}.Key", key_only=True))


#: Debezium's schemas of the transaction topic's key and value.
TRANSACTION_KEY_SCHEMA: Final = orjson.dumps({
    "type": "struct",
    "fields": [{"type": "string", "optional": False, "field": "id"}],
    "optional": False,
    "name": "io.debezium.connector.common.TransactionMetadataKey",
})
TRANSACTION_VALUE_SCHEMA: Final = orjson.dumps({
    "type": "struct",
    "fields": [
        {"type": "string", "optional": False, "field": "status"},
        {"type": "string", "optional": False, "field": "id"},
        {"type": "int64", "optional": True, "field": "event_count"},
        {"type": "array", "items": {"type": "struct", "fields": [
            {"type": "string", "optional": False, "field": "data_collection"},
            {"type": "int64", "optional": False, "field": "event_count"},
        ], "optional": False}, "optional": True, "field": "data_collections"},
        {"type": "int64", "optional": False, "field": "ts_ms"},
    ],
    "optional": False,
    "name": "io.debezium.connector.common.TransactionMetadataValue",
    "version": 1,
})


def wrap(schema: bytes, payload: bytes) -> bytes:
    """``{"schema": <schema>, "payload": <payload>}`` without re-parsing either."""
    return b'{"schema":' + schema + b',"payload":' + payload + b"}"
