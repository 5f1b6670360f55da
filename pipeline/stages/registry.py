"""Every stage, once, in pipeline order (what ``status`` reports and what "downstream" means)."""
from __future__ import annotations

from pipeline.core.layout import STAGES as STAGE_NAMES
from pipeline.stages.contract import Stage
from pipeline.stages.eval import EvalStage
from pipeline.stages.extract import ExtractStage
from pipeline.stages.graph import GraphStage
from pipeline.stages.import_meta import ImportMetaStage
from pipeline.stages.ingest import IngestStage
from pipeline.stages.pack import PackStage
from pipeline.stages.qa import QAStage
from pipeline.stages.routes import RoutesStage
from pipeline.stages.stats import StatsStage
from pipeline.stages.train import PredictStage, TrainStage

STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    IngestStage(), ImportMetaStage(), ExtractStage(), GraphStage(), RoutesStage(), QAStage(), PackStage(),
    TrainStage(), PredictStage(), EvalStage(), StatsStage(),
)}
assert tuple(STAGES) == STAGE_NAMES, "every stage is named once, in pipeline/core/layout.py"
