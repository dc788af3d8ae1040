"""Thin command-line entry points: arguments -> config -> engine, lab or API client."""
