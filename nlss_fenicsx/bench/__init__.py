"""Experiments: timed method runs, benchmark tables and figures (sits on everything)."""
