"""The user commands, one module each (predict, complete, evaluate, export, extract_features, benchmark,
report), and what they share (``inference``, ``results``, ``report_figures``). Only the CLI imports them."""
