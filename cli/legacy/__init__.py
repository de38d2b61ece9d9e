"""The move from the old marketplace's JSON files (amounts in TFP) to PostgreSQL."""
