"""The command line: one thin module per group of commands (parse options, call the library,
say how it ended). Nothing in the toolkit imports this package; it imports the rest."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
