"""runtime/progress.py: quiet default log, detail with -v, listeners for embedding tools."""

import logging

from rvc_index.runtime.progress import DETAIL, Progress, ProgressEvent, SummaryOnly, progress_listener, stage


def test_listeners_get_stage_starts_ends_and_counted_progress():
    events: list[ProgressEvent] = []
    timings: dict[str, float] = {}
    with progress_listener(events.append):
        with stage("train", timings, "spk"):
            progress = Progress("spk: add", 100, "vectors", step_percent=50)
            progress.advance(50)
            progress.advance(50)
    with stage("after", timings):  # the listener is gone
        pass
    kinds = [(e.kind, e.label) for e in events]
    assert kinds == [("start", "spk: train"), ("progress", "spk: add"), ("progress", "spk: add"),
                     ("done", "spk: train")]
    assert events[2].done == events[2].total == 100 and events[-1].seconds >= 0 and "train" in timings


def test_the_default_log_drops_detail_lines_only():
    quiet = SummaryOnly()

    def record(level: int, detail: bool) -> logging.LogRecord:
        made = logging.LogRecord("rvc_index", level, __file__, 1, "x", None, None)
        if detail:
            made.__dict__.update(DETAIL)
        return made

    assert quiet.filter(record(logging.INFO, False)) and not quiet.filter(record(logging.INFO, True))
    assert quiet.filter(record(logging.WARNING, True))
