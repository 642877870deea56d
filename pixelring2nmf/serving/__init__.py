"""Serving without Docker: the DISM build folder and a local MLServer on it."""
