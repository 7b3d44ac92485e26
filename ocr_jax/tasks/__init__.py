"""Tasks: a model, its data and its training objective, as the training loop's `Task` (ocr_jax.training.tasks).

A task holds ``init``, ``loss`` (one surrogate per parameter group, from ocr_jax.estimators), ``train_batches``
(ocr_jax.data.deterministic_batches) and a thin ``evaluate`` hook that calls ocr_jax.evaluation. Each module
registers its task when imported; a config names it (``config.task``) and the module (``config.task_module``):

  air       "air":     AIR on multi-MNIST or frame-wise on moving multi-MNIST (ocr_jax.models.air)
  sqair     "sqair":   SQAIR on moving multi-MNIST with the sequence-length curriculum (ocr_jax.models.sqair)
  toy_vae   "toy_vae": a tiny VAE with a discrete presence latent (tests, demos, the loop benchmark)

The modules are not imported here: a task module is imported by the loop when a config names it.
"""
