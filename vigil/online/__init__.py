"""The online store: Feast's Redis layout, written and read without Feast's per-row overhead."""
