"""Experiments built on the library: the GLUE runner and leaderboard files, and the
ablation grid with its report. They start the command-line programs in child
processes (`rome_jax.programs`) and read what those write.

May import every library package; the command layer imports them, never the reverse.
"""
