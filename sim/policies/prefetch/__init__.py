"""Prefetch / prediction policies, one module per registered name; ``_ids`` holds the shared
ranking helper and ``_oracle`` the trace-reading base of the perfect predictors."""
