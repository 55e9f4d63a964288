"""Two-stage link training: rows and role targets (data), stage 1 inner links (inner), stage 2 outer links through
the unrolled system (outer). The Ray Train placements, checkpoints and the `train` command build on these."""
