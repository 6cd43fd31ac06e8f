"""Procedural phantom consortium: the embedded default data of anonfed.

Real TOF-MRA volumes and fundus photographs cannot ship with the project, so tests and the demo run
on phantoms generated here, deterministically from a seed, and written as real DICOM, NIfTI and PNG
files that go through the same ingest path as hospital data.

Modules, from geometry to files:

- :mod:`~agent.phantoms.seeding`: per-site / per-patient random streams, fake identifiers, UIDs.
- :mod:`~agent.phantoms.tubes`: sub-voxel rendering of tapered tubes (2-D and 3-D).
- :mod:`~agent.phantoms.vessel_tree`: patient-specific 3-D branching vessel trees.
- :mod:`~agent.phantoms.tof_volume`: TOF-MRA-like contrast, head, bias field, Rician noise.
- :mod:`~agent.phantoms.fundus_image`, :mod:`~agent.phantoms.fundus_lesions`,
  :mod:`~agent.phantoms.fundus_calibration`: colour fundus photographs with a DR grade, colours
  calibrated on ``skimage.data.retina()``.
- :mod:`~agent.phantoms.site_plan`: what one site contains (patients, studies, photographs), in memory.
- :mod:`~agent.phantoms.in_memory`: quick in-memory records for tests (no files).
- :mod:`~agent.phantoms.dicom_writers`, :mod:`~agent.phantoms.nifti_writers`,
  :mod:`~agent.phantoms.png_writers` (atomic writes via :mod:`protocols.atomic_files`): file formats.
- :mod:`~agent.phantoms.site_writer`, :mod:`~agent.phantoms.consortium`: the ``anonfed phantoms``
  command (sites, layout, configs, overwrite rules).
"""
