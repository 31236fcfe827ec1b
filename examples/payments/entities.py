"""The card paying, the device it pays from, and the merchant paid."""

from feast import Entity, ValueType

card = Entity(name="card", join_keys=["card_id"], value_type=ValueType.STRING)
device = Entity(name="device", join_keys=["device_id"], value_type=ValueType.STRING)
merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING)
