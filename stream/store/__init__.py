"""Every Postgres concern: the schema (migrations/, shipped in the package), the journal write,
campaign budgets, and waiting for Postgres when it is away."""
