"""GAN training at a site: the trainer, the federation entry point (:mod:`local_round`),
checkpointed local runs, sampling/export and the ``anonfed train`` command."""
