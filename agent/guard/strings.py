"""Detectors for text that must never leave a site: file paths, patient keys, DICOM UIDs.

They are deliberately blunt. Every string an agent sends is short and made by our own code
(site id, method name, a refusal reason), so a false positive only costs a clearer reason text,
while a false negative could leak an identifier.
"""

from __future__ import annotations

import re
from typing import Iterable

_PATH_SEPARATOR = re.compile(r"[/\\]")
_HOME = re.compile(r"(^|\s)~")
_FILE_SUFFIX = re.compile(r"\.(dcm|dicom|nii|gz|png|jpe?g|tiff?|ya?ml|sqlite|db|npz|npy|csv|pt|pth|json|txt|key|pem)\b", re.I)
_HEX_RUN = re.compile(r"[0-9a-fA-F]{16,}")  # patient keys are 32 hex characters; hashes 64
_DICOM_UID = re.compile(r"\b\d+(\.\d+){4,}\b")
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+_=-]{40,}")  # base64-ish secrets or encoded blobs
_MIN_FORBIDDEN_LEN = 4
_FRAGMENT = 8  # characters of a patient key that count as a leak


def find_identifying_text(value: str, *, forbidden: Iterable[str] = ()) -> str | None:
    """The rule ``value`` breaks, or ``None`` if it may leave the site.

    The returned rule names the kind of problem only; it never quotes the value, so it can be
    logged and sent back in a refusal.
    """
    if _PATH_SEPARATOR.search(value) or _HOME.search(value):
        return "looks like a file path (contains a path separator)"
    if _FILE_SUFFIX.search(value):
        return "looks like a file name (has a data-file suffix)"
    if _HEX_RUN.search(value):
        return "contains a long hexadecimal run (patient keys and hashes look like this)"
    if _DICOM_UID.search(value):
        return "contains a DICOM UID-like dotted number"
    if _LONG_TOKEN.search(value):
        return "contains a long opaque token"
    lowered = value.lower()
    for item in forbidden:
        item = item.lower()
        if len(item) < _MIN_FORBIDDEN_LEN:
            continue
        # A leaked fragment identifies as well as the whole key: look for any window of it.
        width = min(len(item), _FRAGMENT)
        if any(item[i : i + width] in lowered for i in range(len(item) - width + 1)):
            return "contains a site-private identifier (or a fragment of one)"
    return None
