"""Entities of the fraud use case."""

from feast import Entity, ValueType

# The card holder: customer windows (counts and mean amounts) hang off it.
customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64, description="Card holder")

# The merchant terminal: terminal windows (counts and fraud risk from delayed labels) hang off it.
terminal = Entity(
    name="terminal", join_keys=["terminal_id"], value_type=ValueType.INT64, description="Merchant terminal"
)

# One card payment: the training view keys its features by it.
transaction = Entity(
    name="transaction", join_keys=["transaction_id"], value_type=ValueType.INT64, description="Card transaction"
)
