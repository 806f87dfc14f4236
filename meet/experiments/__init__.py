"""Experiments built on the public train / evaluate API: ``python -m meet.experiments``.

Subcommands (one module each; nothing is imported until a subcommand runs):

- ``ablation`` (:mod:`.ablation`): trains small Shapes models with one part of MEET
  removed at a time, sweeps n_bits and the cascade rates R and q, and writes a table
  (JSON + Markdown) and plotly figures (:mod:`.report`). What it trains and measures is
  fixed in :mod:`.settings`.
- ``reproduce`` (:mod:`.reproduce`): trains on precomputed Flickr30K / COCO features
  (the SCAN/HREM layout) with the ``official`` or ``full`` preset and evaluates under the
  paper's protocols, beside the paper's numbers (:mod:`.paper`).
"""
