"""Stage drivers: each stage declared once on the stage contract (:mod:`pipeline.stages.contract`)."""
