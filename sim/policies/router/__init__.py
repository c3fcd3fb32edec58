"""Request routers (which replica a new request joins), one module per registered name."""
