"""What a reader sees of runs: the interactive graph views, the generated data set's statistics, scaling curves and
ablations across runs, and the pages written from a run (the journey, README's figures)."""
