"""CLI subcommands. Each module here exposes ``register(subparsers)``; the CLI finds them all."""
