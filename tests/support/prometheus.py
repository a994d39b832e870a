"""A real Prometheus for tests (Debian's `prometheus` package), scraping a tiny exporter the test runs.

    with prometheus_server() as prom:          # exporter + Prometheus on free ports, scrape every 1 s
        prom.set("ringfence_test_latency_ms", 200, segment="support-ops")
        prom.wait_for('max(ringfence_test_latency_ms{segment="support-ops"})', 200)
        ...                                    # point a metric provider at prom.url
        prom.stop()                            # Prometheus gone mid-rollout

The exporter is prometheus_client's own HTTP server on a private registry; Prometheus runs with its
data in a temporary folder and a long query look-back (`--query.lookback-delta`), so a test whose
clock (time_machine) runs minutes ahead of the real one still reads the latest scraped value.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from tests.support.web_processes import free_port

BINARY = shutil.which("prometheus")


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen
    registry: CollectorRegistry
    log: Path
    gauges: dict[str, Gauge] = field(default_factory=dict)

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set the exporter's gauge `name` (created on first use with these label names)."""
        gauge = self.gauges.get(name)
        if gauge is None:
            gauge = self.gauges[name] = Gauge(name, f"test gauge {name}", sorted(labels), registry=self.registry)
        (gauge.labels(**labels) if labels else gauge).set(value)

    def query(self, promql: str) -> list:
        """An instant query now, with the real clock: the result list (empty while nothing matches)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql, "time": f"{time.time():.3f}"})
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - our own local server
            return json.load(answer)["data"]["result"]

    def wait_for(self, promql: str, value: float, timeout: float = 20.0) -> None:
        """Until Prometheus has scraped the exporter and the query gives `value`."""
        deadline = time.monotonic() + timeout
        seen: object = None
        while time.monotonic() < deadline:
            try:
                result = self.query(promql)
                seen = [float(series["value"][1]) for series in result]
                if seen == [value]:
                    return
            except OSError as exc:
                seen = exc
            time.sleep(0.2)
        raise AssertionError(f"Prometheus never gave {value} for {promql} (last: {seen}); log: "
                             f"{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextmanager
def prometheus_server(scrape_seconds: int = 1) -> Iterator[PrometheusServer]:
    if BINARY is None:
        missing = "no prometheus binary (apt-get install prometheus; .ci/run installs it)"
        if os.environ.get("CI"):  # CI installs it: a missing binary there is a failure, not a skip
            pytest.fail(missing)
        pytest.skip(missing)
    registry = CollectorRegistry()
    exporter_port = free_port()
    exporter, exporter_thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    folder = Path(tempfile.mkdtemp(prefix="rf-prometheus-"))
    config = folder / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: {scrape_seconds}s, evaluation_interval: {scrape_seconds}s}}\n"
        "scrape_configs:\n"
        "  - job_name: exporter\n"
        f"    scrape_interval: {scrape_seconds}s\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n")
    port = free_port()
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [BINARY, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--query.lookback-delta=1h", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, registry, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as answer:  # noqa: S310
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Prometheus did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield server
    finally:
        server.stop()
        exporter.shutdown()
        exporter.server_close()
        exporter_thread.join(timeout=5)
        shutil.rmtree(folder, ignore_errors=True)
