"""Data sets for the experiment families."""
