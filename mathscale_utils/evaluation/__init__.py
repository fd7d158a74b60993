"""MWPBench evaluation (paper §2, §4.2): the items to score, the evaluation run and its metrics, what notebook 05
shows about the answers, and the numbers the paper reports."""
