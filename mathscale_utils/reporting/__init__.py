"""What a reader sees of runs: the interactive graph views (the whole graph in WebGL) and notebook 02's explorer, the
generated data set's statistics, scaling curves and ablations across runs, executed notebooks for readers without a
kernel (widget state, the static gallery), and the pages written from a run (the journey, README's figures)."""
