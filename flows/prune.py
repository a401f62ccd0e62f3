"""# masters-prune: mask the teachers (without writing masked checkpoints)

Masters distils from *masked* teachers: each weight tensor loses its smallest-magnitude
entries (ratio r), and the teacher is restored step by step, r_max -> 0, during training.

The paper writes one checkpoint per ratio. At 38B parameters that is hundreds of GB; here no
masked checkpoint is written at all. This flow fingerprints each teacher (the hash of its
weights names every answer generated from it) and masks it once through its ratios, in
increasing order, on its own device, logging per tensor and ratio what is zeroed and at which
magnitude. Generation masks the teacher the same way where it samples.

Then, as a sanity check, the accuracy of a teacher at ratios 0, 0.05, ..., 0.5 (the
teacher-alone version of the paper's Table 5(a)) is plotted to MLflow.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from masters.config import from_public
from masters.tracking import Tracker
from tasks.common import flow_run_tags
from tasks.prune import prune_teacher, sweep_teacher


@flow(name="masters-prune", log_prints=True)
def prune_flow(config: dict | None = None, sweep: list[str] | None = None) -> dict:
    """Every teacher fingerprinted and its mask reported; accuracy-vs-ratio sweeps for the
    `sweep` teachers."""
    cfg = from_public(config)
    names = [t.name for t in cfg.teachers]
    unknown = sorted(set(sweep or []) - set(names))
    if unknown:
        raise ValueError(f"cannot sweep unknown teacher(s) {unknown}; configured: {names}")
    tracker = Tracker(cfg.tracking)
    parent = tracker.start_run("prune", tags=flow_run_tags())
    with tracker.ended(parent):
        public = cfg.public_dict()
        tracker.log_params(parent, {"teachers": public["teachers"], "masking": public["masking"]})
        manifests = [prune_teacher(public, name, parent) for name in names]
        sweeps = [sweep_teacher(public, m, parent) for m in manifests if m["teacher"] in
                  (sweep or [])]
        for s in sweeps:
            get_run_logger().info("accuracy of teacher %s by mask ratio:\n%s", s["teacher"],
                                  s["table"])
    return {"teachers": manifests, "sweeps": sweeps, "mlflow_run_id": parent}
