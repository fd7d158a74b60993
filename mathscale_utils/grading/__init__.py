"""Answer text and the judges that score it: the \\boxed{} and final-answer extractors with the normaliser, the
paper's judge frozen as the official driver has it, and the strict judge. Functions on strings, no I/O."""
