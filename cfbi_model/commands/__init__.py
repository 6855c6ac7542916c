"""Sub-commands of the `cfbi` command line: each module here defines `add_parser(subparsers)`, which adds
its sub-parser and sets `func` (called with the parsed arguments, returns an exit code)."""
