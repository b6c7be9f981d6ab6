"""The `batchpipe` subcommands, one module each; `cli` registers them through their `add_parser`."""
