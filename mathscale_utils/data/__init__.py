"""The data the method reads: MWPBench's ten source datasets as records (train and test), and the seed questions
that stage 01 extracts concepts from."""
