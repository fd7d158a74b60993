"""The ground every other layer stands on: the params loader and its config sections, a run's file names and row
types (RunDir, STAGES), atomic file io, and MWPBench's prompt templates. It imports nothing else of the package."""
