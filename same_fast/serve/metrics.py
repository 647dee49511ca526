"""Server counters and their Prometheus text exposition (format 0.0.4), without a client library."""
from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable

# Seconds; a frame round trip on loopback spans ~1 ms (identity) to seconds (paper on CPU).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Cumulative-bucket histogram of seconds (Prometheus semantics)."""

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, acc = [], 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append(f'{name}_bucket{{le="{b}"}} {acc}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.sum:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


class Metrics:
    """Thread-safe counters the handlers bump; ``render`` writes the exposition text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames = 0  # enhanced frames returned
        self.errors: dict[str, int] = {}  # by kind: decode, limit, model, busy, shutdown, auth
        self.latency = Histogram()  # request received -> reply handed to the socket
        self.connections = 0
        self.connections_total = 0
        self.http_requests = 0

    def frame_done(self, seconds: float) -> None:
        with self._lock:
            self.frames += 1
            self.latency.observe(seconds)

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def connection(self, delta: int) -> None:
        with self._lock:
            self.connections += delta
            if delta > 0:
                self.connections_total += delta

    def render(self, loop_stats: dict, model: dict, adaptation: dict | None) -> str:
        with self._lock:
            lines = [
                "# HELP same_fast_frames_total Frames enhanced and returned.",
                "# TYPE same_fast_frames_total counter",
                f"same_fast_frames_total {self.frames}",
                "# HELP same_fast_errors_total Frames or requests answered with an error.",
                "# TYPE same_fast_errors_total counter",
            ]
            kinds = dict(self.errors) or {"decode": 0}
            lines += [f'same_fast_errors_total{{kind="{k}"}} {v}' for k, v in sorted(kinds.items())]
            lines += ["# HELP same_fast_latency_seconds Receive-to-reply time per frame.",
                      "# TYPE same_fast_latency_seconds histogram"]
            lines += self.latency.lines("same_fast_latency_seconds")
            lines += [
                "# HELP same_fast_stream_connections Open WebSocket streams.",
                "# TYPE same_fast_stream_connections gauge",
                f"same_fast_stream_connections {self.connections}",
                "# TYPE same_fast_stream_connections_total counter",
                f"same_fast_stream_connections_total {self.connections_total}",
            ]
        gauges = {
            "queue_depth": ("gauge", "Frames waiting in the batching queue."),
            "in_flight": ("gauge", "Frames inside a model call."),
            "dropped": ("counter", "Frames dropped by the drop_oldest policy."),
            "batches": ("counter", "Model calls."),
            "failed_batches": ("counter", "Model calls that raised."),
        }
        for key, (kind, help_) in gauges.items():
            name = f"same_fast_loop_{key}" + ("_total" if kind == "counter" else "")
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}",
                      f"{name} {loop_stats.get(key, 0)}"]
        lines += ["# HELP same_fast_loop_latency_seconds Queue+model time (C++ loop), recent window.",
                  "# TYPE same_fast_loop_latency_seconds gauge"]
        for q, key in (("0.5", "p50_s"), ("0.99", "p99_s"), ("0.999", "p999_s")):
            lines.append(f'same_fast_loop_latency_seconds{{quantile="{q}"}} '
                         f'{loop_stats.get(key, 0.0):.6f}')
        lines += ["# HELP same_fast_weights_version Version of the served weights (0 = source).",
                  "# TYPE same_fast_weights_version gauge",
                  f"same_fast_weights_version {model.get('weights_version', 0)}"]
        a = adaptation or {}
        lines += ["# HELP same_fast_adaptation_steps_total Online adaptation steps taken.",
                  "# TYPE same_fast_adaptation_steps_total counter",
                  f"same_fast_adaptation_steps_total {a.get('steps', 0)}",
                  "# HELP same_fast_adaptation_acceptance Mean picker weight of adapted samples.",
                  "# TYPE same_fast_adaptation_acceptance gauge",
                  f"same_fast_adaptation_acceptance {a.get('acceptance') or 0.0}",
                  "# HELP same_fast_adaptation_resets_total Resets to the source weights "
                  "(requested or by the safety monitor).",
                  "# TYPE same_fast_adaptation_resets_total counter",
                  f"same_fast_adaptation_resets_total {a.get('resets') or 0}",
                  "# HELP same_fast_adaptation_frozen 1 when adaptation is frozen or off.",
                  "# TYPE same_fast_adaptation_frozen gauge",
                  f"same_fast_adaptation_frozen {0 if a.get('state') == 'adapting' else 1}"]
        return "\n".join(lines) + "\n"
