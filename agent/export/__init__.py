"""Synthetic outputs as DICOM that says what it is: Secondary Capture (Conversion Type SYN) + SEG
for TOF image+label pairs, Ophthalmic Photography for fundus images, all marked de-identified."""
