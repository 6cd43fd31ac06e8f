"""Site ingest: scan sources into the catalog, quarantine what cannot be used, cache pixels.

Public entry points: :func:`agent.ingest.pipeline.run_ingest`,
:class:`agent.ingest.catalog.Catalog`, :func:`agent.ingest.datasets.load_labeled_volumes`,
:func:`agent.ingest.datasets.load_labeled_images_2d`,
:func:`agent.ingest.datasets.load_fundus_images`.
"""
