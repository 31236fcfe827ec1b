"""The one definition of Vigil's features, shared by the flow, the backfill and scoring."""
