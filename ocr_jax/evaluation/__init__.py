"""Evaluation of trained models: the metrics of the papers, computed from a task's model, config and test data.

  air     AIR: count accuracy, confusion, ELBO, IWAE log p(x) on images; AIR frame by frame on SQAIR's sequences
  sqair   SQAIR: counting, bounds and log p(x) over sequences; tracking against ground-truth identities; addition

The functions take the task object (``task.model``, ``task.config``, its test data and input conversion) as an
argument; these modules never import the task modules (ocr_jax.tasks import them for their ``evaluate`` hooks).
"""
