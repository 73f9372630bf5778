"""The pure rules engine: card events, offers and account state in, decisions and ledger entries
out. No I/O, clock or await; its imports are checked (import-linter contracts in pyproject.toml)."""
