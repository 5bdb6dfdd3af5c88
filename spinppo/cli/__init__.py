"""The command line, one module per job (see docs/design.md)."""
