"""Who the features describe: the card holder and the merchant terminal."""

from feast import Entity, ValueType

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64, description="Card holder")

terminal = Entity(
    name="terminal", join_keys=["terminal_id"], value_type=ValueType.INT64, description="Merchant terminal"
)
