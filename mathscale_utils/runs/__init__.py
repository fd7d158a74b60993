"""The six stages as functions (``stages.run(P, "01")``), the chain that runs them through their notebooks with
papermill, sweeps over settings, the run's manifest, and the plan of what a run will cost before it starts
(``--plan``). The top layer: nothing in the package imports it."""
