"""Everything that runs at a hospital and may touch real images.

Ingest (DICOM, NIfTI, PNG/JPEG, PACS), the patient catalog, phantoms, patching, generative models,
DP training, k-SALSA, export, the privacy guard and the thin Flower ClientApp.
"""
