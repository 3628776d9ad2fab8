"""One experiment: dataset -> distilled sets -> evaluation networks -> calibration -> table.

:func:`run_experiment` composes the stages of ``ddcal run``, each a function
that takes and returns values:

1. **data** (:mod:`~ddcal.pipeline.data`): the dataset; with
   ``oracle_per_class > 0`` a per-class slice of the *training* split is held
   out for the oracle rows only, and everything else uses the rest (the pool).
2. **distill** (:mod:`~ddcal.pipeline.distilled`): MTT's expert trajectories
   (trained once, shared), the pool distilled with MDT off and at
   ``mdt_ratio``; or the user's ``distilled`` file. A set carrying ZCA has every
   split whitened with it.
3. **train** (:mod:`~ddcal.pipeline.networks`): one network per arm and seed.
4. **calibrate** (:mod:`~ddcal.pipeline.rows`): the table as a list of row
   specs with stable ids; temperatures fitted without the test set.
5. **report**: ``results.json``, ``table.md``, ``table.csv``, ``config.toml``
   and the figures (:mod:`~ddcal.pipeline.figures`) under ``plots/``.

Every expert set, distilled set, network and set of logits goes through the
artifact cache (:mod:`~ddcal.pipeline.cache`) under ``cache/`` in the output
folder, keyed by exactly the settings it reads and the digests of what it
consumes, so running again recomputes only what a changed setting invalidates.
"""

from ddcal.pipeline.run import ExperimentResult, run_experiment

__all__ = ["ExperimentResult", "run_experiment"]
