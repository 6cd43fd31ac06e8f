"""k-SALSA at the site: patient-level k-anonymous clustering, synthetic averages, baselines, release.

Modules: :mod:`~agent.ksalsa.clustering` (groups of >= k distinct patients),
:mod:`~agent.ksalsa.baselines` (k-Same-Pixel, k-Same-Eigen, centroid),
:mod:`~agent.ksalsa.style_alignment` (k-SALSA's local style alignment),
:mod:`~agent.ksalsa.release` (PNG + DICOM OP + k-anonymity claim),
:mod:`~agent.ksalsa.task` (the plain function the federation's ``ksalsa`` handler calls).
Only the clustering is imported here; the rest import torch and are imported where used.
"""

from agent.ksalsa.clustering import Clustering, Group, cluster_by_patient

__all__ = ["Clustering", "Group", "cluster_by_patient"]
