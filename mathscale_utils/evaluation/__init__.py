"""MWPBench evaluation (paper §2, §4.2): the items to score, the evaluation run and its metrics, the degenerate
answers, the fine-tuned student against its untrained base, what notebook 05 shows about the answers, and the numbers
the paper reports."""
