"""Incremental readers of a run's metrics.jsonl, train.log and samples/, and chart thinning."""

from core.monitor.downsample import downsample, downsample_xy
from core.monitor.logs import LogTail
from core.monitor.metrics import MetricsSeries, MetricsTail
from core.monitor.samples import Sample, SampleIndex

__all__ = ["LogTail", "MetricsSeries", "MetricsTail", "Sample", "SampleIndex", "downsample", "downsample_xy"]
