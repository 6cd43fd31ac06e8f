"""Reading studies from a PACS (DICOMweb or DIMSE) into a site-local staging folder, and pushing
synthetic outputs back. Nothing here sends real pixels anywhere: sync only pulls."""
