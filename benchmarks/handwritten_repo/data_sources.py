"""Where the feature data comes from: the streaming flow's pushes and request data."""

import os
import warnings
from pathlib import Path

from feast import Field, FileSource, PushSource, RepoConfig, RequestSource
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.types import Float64, Int64, UnixTimestamp

# The offline store: the project's data/offline unless VIGIL_OFFLINE_DIR says otherwise
# (`vigil` sets it to its VIGIL_DATA_DIR's; stock `feast apply` here uses the default).
_OFFLINE_DIR = os.environ.get("VIGIL_OFFLINE_DIR", str(Path(__file__).resolve().parent.parent / "data" / "offline"))

# Recent transactions per customer, pushed by the feature flow after every update.
customer_history_push = PushSource(
    name="customer_history_push",
    batch_source=FileSource(
        name="customer_history_offline",
        path=f"{_OFFLINE_DIR}/customer_history",
        timestamp_field="event_timestamp",
    ),
)

# Labels of recent transactions per terminal, pushed by the feature flow.
terminal_history_push = PushSource(
    name="terminal_history_push",
    batch_source=FileSource(
        name="terminal_history_offline",
        path=f"{_OFFLINE_DIR}/terminal_history",
        timestamp_field="event_timestamp",
    ),
)

# The transaction being scored: features are computed as of its own time, and its id
# lets a transaction that was already ingested count once.
transaction_request = RequestSource(
    name="transaction",
    schema=[
        Field(name="transaction_id", dtype=Int64),
        Field(name="tx_datetime", dtype=UnixTimestamp),
        Field(name="tx_amount", dtype=Float64),
    ],
)

# The features (fraud_v1's, v2's and v3's) of every ingested transaction as of its own time, a
# Parquet dataset partitioned by day (date=YYYY-MM-DD), written by the incremental backfill
# (`vigil backfill`, run by `vigil train` for the days it needs) from the flow's event log.
transaction_features_source = FileSource(
    name="transaction_features_offline",
    path=f"{_OFFLINE_DIR}/features",
    timestamp_field="event_timestamp",
)


# The same table for Feast's Spark offline store (`vigil train --engine spark`): Spark prunes
# the day partitions a training set does not need. (Feast calls its Spark API experimental,
# on every construction: said once here, in this comment.)
class DayPartitionedSparkSource(SparkSource):
    """A SparkSource that Spark checks when it reads it (`vigil train --engine spark`, on
    Feast's Spark offline store). `feast plan` and `feast apply` run this repo on its file
    offline store, which has no Spark session to check a Spark table with: there, the
    check is left to Spark."""

    def validate(self, config: RepoConfig) -> None:
        if getattr(config.offline_store, "type", None) == "spark":
            super().validate(config)


with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="The spark data source API is an experimental feature")
    transaction_features_spark_source = DayPartitionedSparkSource(
        name="transaction_features_spark",
        path=f"{_OFFLINE_DIR}/features",
        file_format="parquet",
        timestamp_field="event_timestamp",
        date_partition_column="date",
    )
