"""Feast's Redis online-store layout for the two history views, encoded directly.

Feast (0.67, `RedisOnlineStore`) stores one Redis hash per entity key:
  key   = serialize_entity_key(entity, version 3) + project name
  field = murmur3("<view>:<feature>") -> serialized `feast.types.Value`
  field = "_ts:<view>"                -> serialized `google.protobuf.Timestamp`
We write and read exactly that, so any Feast client (`get_online_features`) reads
what the flow writes, but we compute the field hashes once and skip Feast's per-value
type conversion. tests/integration/test_feast_repo.py proves the equivalence with
Feast's own reader, and its first tests the keys and field names.

Feast's protobuf classes are imported where values are encoded or decoded, not here:
importing any part of the `feast` package imports all of it (5.5 s measured), and the
scoring service needs only the keys and field names (its decoder is `columns`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from types import SimpleNamespace

import mmh3
import numpy as np

from vigil.features import spec
from vigil.features.history import EntityHistory

_INT64 = struct.Struct("<q")
_STRING, _INT64_TYPE = 2, 4  # feast.types.ValueType.Enum: STRING, INT64


def _key_head(join_key: str) -> bytes:
    """What Feast's serialize_entity_key (version 3) puts before one Int64 join key's value."""
    name = join_key.encode()
    return struct.pack("<II", 1, _STRING) + struct.pack("<I", len(name)) + name + struct.pack("<II", _INT64_TYPE, 8)


def field_key(name: str) -> bytes:
    """Feast's Redis field name for "<view>:<feature>": murmur3_32 (unsigned), 4 bytes
    little-endian (`feast.infra.online_stores.helpers._mmh3`)."""
    return struct.pack("<I", mmh3.hash(name, signed=False))


@cache
def value_codec() -> SimpleNamespace:
    """Feast's value classes and protobuf's Timestamp, imported on first use and kept: the
    writer encodes once per updated entity per batch, and an import statement per call
    cost 18 % of an encode. A process that freezes its heap (the flow) calls it first:
    importing Feast adds ~210k objects that a full collection would otherwise walk."""
    from feast.protos.feast.types.Value_pb2 import DoubleList, Int64List, Value
    from google.protobuf.timestamp_pb2 import Timestamp

    return SimpleNamespace(DoubleList=DoubleList, Int64List=Int64List, Value=Value, Timestamp=Timestamp)


def entity_key_bytes(join_key: str, value: int, project: str) -> bytes:
    """Feast's serialize_entity_key (version 3) for one Int64 join key, plus the project."""
    return _key_head(join_key) + _INT64.pack(value) + project.encode()


@dataclass(frozen=True)
class HistoryView:
    """One history feature view: its entity, Redis field names, and value encoding.

    Fields are, in order: event times (Int64 array), transaction ids (Int64 array),
    values (Float64 array for amounts, Int64 array for fraud labels).
    """

    name: str
    join_key: str
    features: tuple[str, str, str]
    value_is_float: bool
    project: str

    @cached_property
    def field_keys(self) -> tuple[bytes, ...]:
        return tuple(field_key(f"{self.name}:{feature}") for feature in self.features)

    @property
    def ts_field(self) -> bytes:
        return f"_ts:{self.name}".encode()

    def redis_key(self, entity_id: int) -> bytes:
        return entity_key_bytes(self.join_key, entity_id, self.project)

    def redis_keys(self, entity_ids: Sequence[int]) -> list[bytes]:
        """`redis_key` of each id (a batch's keys: the constant parts built once)."""
        head, tail, pack = _key_head(self.join_key), self.project.encode(), _INT64.pack
        return [head + pack(int(e)) + tail for e in entity_ids]

    def encode(self, history: EntityHistory) -> dict[bytes, bytes]:
        """The hash fields that store `history` (timestamp: its newest fact)."""
        p = value_codec()
        ValueProto, DoubleList, Int64List = p.Value, p.DoubleList, p.Int64List
        keys = self.field_keys
        values_proto = (
            ValueProto(double_list_val=DoubleList(val=history.value.tolist()))
            if self.value_is_float
            else ValueProto(int64_list_val=Int64List(val=history.value.astype(np.int64).tolist()))
        )
        stamp = p.Timestamp(seconds=history.latest_ts or 0)
        return {
            keys[0]: ValueProto(int64_list_val=Int64List(val=history.ts.tolist())).SerializeToString(),
            keys[1]: ValueProto(int64_list_val=Int64List(val=history.tx_id.tolist())).SerializeToString(),
            keys[2]: values_proto.SerializeToString(),
            self.ts_field: stamp.SerializeToString(),
        }

    def decode(self, raw: Sequence[bytes | None]) -> EntityHistory:
        """Inverse of `encode` for the first three fields as returned by HMGET."""
        ValueProto = value_codec().Value
        if raw[0] is None or raw[1] is None or raw[2] is None:
            return EntityHistory.empty()
        ts = np.array(ValueProto.FromString(raw[0]).int64_list_val.val, dtype=np.int64)
        tx_id = np.array(ValueProto.FromString(raw[1]).int64_list_val.val, dtype=np.int64)
        proto = ValueProto.FromString(raw[2])
        values = proto.double_list_val.val if self.value_is_float else proto.int64_list_val.val
        value = np.array(values, dtype=np.float64)
        if not (ts.shape == tx_id.shape == value.shape):
            raise ValueError(f"corrupt {self.name} entry: arrays of unequal length")
        return EntityHistory(ts, tx_id, value)


@dataclass(frozen=True)
class OnlineLayout:
    """The two history views of a Feast project."""

    customer: HistoryView
    terminal: HistoryView

    @staticmethod
    def for_project(project: str) -> OnlineLayout:
        return OnlineLayout(
            customer=HistoryView(spec.CUSTOMER_VIEW, "customer_id", spec.CUSTOMER_FIELDS, True, project),
            terminal=HistoryView(spec.TERMINAL_VIEW, "terminal_id", spec.TERMINAL_FIELDS, False, project),
        )

    def view(self, kind: str) -> HistoryView:
        return self.customer if kind == "customer" else self.terminal
