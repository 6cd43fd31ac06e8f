"""k-SALSA at the site: patient-level k-anonymous clustering, synthetic averages, baselines, release.

Modules: :mod:`~agent.ksalsa.clustering` (groups of >= k distinct patients),
:mod:`~agent.ksalsa.baselines` (k-Same-Pixel, k-Same-Eigen, centroid),
:mod:`~agent.ksalsa.style_alignment` (k-SALSA's local style alignment),
:mod:`~agent.ksalsa.pipeline` (inversion, clustering and one average per group by any method),
:mod:`~agent.ksalsa.release` (PNG + DICOM OP + k-anonymity claim),
:mod:`~agent.ksalsa.task` (``run_ksalsa_task``: the plain function a federation ``ksalsa`` handler
calls; policy refusals first), :mod:`~agent.ksalsa.cli` (``anonfed ksalsa``).
Only the clustering is imported here; the rest import torch and are imported where used.
"""

from agent.ksalsa.clustering import Clustering, Group, cluster_by_patient

__all__ = ["Clustering", "Group", "cluster_by_patient"]
