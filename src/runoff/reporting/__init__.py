"""The last stage: certify a run and show the result.

- :mod:`.evaluation`: certify a logits file or a run folder (the methods that fit d) and write
  its report;
- :mod:`.tables`: budgets, certified-accuracy tables and plots;
- :mod:`.comparison`: several runs side by side, next to the paper's figures;
- :mod:`.collective_table`: ``--collective``: collective beside pointwise certified accuracy
  (summary, tables, progress).

Matplotlib is imported only when a plot is drawn.
"""
