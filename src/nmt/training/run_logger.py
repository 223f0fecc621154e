"""Lightning's MLflow logger for a resumed run: a metric is not logged again at a step the run already has."""

from __future__ import annotations

from typing import Mapping, Optional

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only


class ResumedMLFlowLogger(MLFlowLogger):
    """Log into an existing MLflow run, skipping the steps that the interrupted process already logged.

    A resumed run restarts at the step of its last checkpoint, so it computes again the metrics of the steps
    between that checkpoint and the interruption. For each metric key, a point at or below the highest step
    that the run already has for that key is dropped, and the interrupted process's value stays. On CPU the
    recomputed values are equal to the dropped ones, because a resumed run repeats the same steps. With
    ``optim.cooldown_fraction`` set, the learning rate follows the wall clock and the two can differ.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._last_steps: dict[str, int] | None = None

    def last_logged_steps(self) -> dict[str, int]:
        """Return {metric key: highest logged step} of the run, read from the tracking store once."""
        if self._last_steps is None:
            client = self.experiment
            keys = client.get_run(self.run_id).data.metrics
            self._last_steps = {
                key: max(point.step for point in client.get_metric_history(self.run_id, key)) for key in keys
            }
        return self._last_steps

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        last_steps = self.last_logged_steps()
        fresh = {key: value for key, value in metrics.items() if step is None or step > last_steps.get(key, -1)}
        if fresh:
            super().log_metrics(fresh, step)
