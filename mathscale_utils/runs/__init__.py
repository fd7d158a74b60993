"""The six stages as functions (``stages.run(P, "01")``) and the chain that runs them through their notebooks with
papermill, sweeps over settings, and the run's manifest. The top layer: nothing in the package imports it."""
