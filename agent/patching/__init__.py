"""2-D training patches (image + vessel label) cut from TOF-MRA volumes, tagged by patient."""
