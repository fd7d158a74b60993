"""The paper's method, step by step (MathScale §3), each step a module, in the order a seed question meets them:

1. ``concepts``      §3.1  the teacher names each seed question's topics and knowledge points; rare ones are dropped
2. ``graph``         §3.2  the concept graph: concepts are nodes, co-occurrence counts weight the edges
3. ``compose``       §3.2  random walks on the graph compose new sets of concepts (``composition_file`` writes and
                           reads compositions.jsonl at paper scale)
4. ``generate``      §3.3  the teacher writes a new question and solution for each composition (``reply_format``
                           holds the prompt's wording and parses the reply; ``shards`` reads the raw rows back)
5. ``filters``       §3.3  answer check, decontamination against MWPBench test (``decontamination``), near-duplicate
                           removal (``near_duplicates``; both compare ``text_hashing``'s words), assembly
6. ``dataset_card``  §4.1  MathScaleQA written out: the data set, its Hugging Face copy, its card and summary
"""
