"""MathScale (arXiv 2403.02884): the library behind the notebooks, in layers. A module imports from its own
subpackage and from the layers below it, never from a layer above or beside it (tests/test_layout.py):

    core  <  grading, inference  <  data  <  method  <  training, evaluation  <  reporting  <  runs

``method`` holds the paper's steps in their order; ``runs`` the stage functions and the chain that runs them.
"""

__version__ = "0.1.0"
