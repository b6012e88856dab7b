"""The OEL run: its on-disk layout, the resumable stage state machine, each round's evaluation record
and the run's report.

Pure Python (matplotlib only for the report's figure, imported when the figure is drawn): the
trainer orchestrates the stages through ``RunState``; ``verl-oel report RUN_DIR`` calls
``render_report`` on any run directory, finished or not.
"""

from verl_oel.oel.report import ReportPaths, collect, render_report
from verl_oel.oel.round_eval import (
    ConsolidationSummary,
    EvalFormatError,
    IFBenchScore,
    InContextPoint,
    OODResult,
    RoundEval,
    load_ifbench_record,
    load_round_eval,
    save_ifbench_record,
    save_round_eval,
)
from verl_oel.oel.run_state import (
    SAFE_TO_CHANGE,
    STAGE_OUTPUTS,
    STAGES,
    NextStage,
    RunConfigMismatchError,
    RunLayout,
    RunLockedError,
    RunSpec,
    RunState,
    StageOrderError,
)

__all__ = [
    "SAFE_TO_CHANGE",
    "STAGES",
    "STAGE_OUTPUTS",
    "ConsolidationSummary",
    "EvalFormatError",
    "IFBenchScore",
    "InContextPoint",
    "NextStage",
    "OODResult",
    "ReportPaths",
    "RoundEval",
    "RunConfigMismatchError",
    "RunLayout",
    "RunLockedError",
    "RunSpec",
    "RunState",
    "StageOrderError",
    "collect",
    "load_ifbench_record",
    "load_round_eval",
    "render_report",
    "save_ifbench_record",
    "save_round_eval",
]
