"""A Spark worker dies mid-scoring: the job still completes with one row per tile.

A standalone master and two 1-core workers run on loopback (``landuse.cluster.standalone``);
the scoring driver runs in a child process, as a task's driver would, and reports the
scoring stage's progress. Once a few of its tasks are done and both executors are busy,
the second worker is killed with SIGKILL together with everything it started (its executor
JVM, the PySpark daemon and Python workers): a machine lost mid-job. Spark must re-run the
lost work on the surviving worker; the committed predictions must hold exactly one row per
tile, without error rows.

The bundle is a hand-built ONNX network heavy enough (four 64-channel 3x3 convolutions on
64 px tiles, ~10 ms a tile on one thread) that the scoring stage lasts several seconds; its
32 partitions (~12 tiles each) make the lost task a small share of the work.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest

from landuse import counties, labels
from landuse.cluster.standalone import (
    StandaloneCluster,
    free_port,
    start_master,
    stop_master,
)
from landuse.models.bundle import BundleSpec, load_bundle
from landuse.models.preprocessing import PreprocessSpec
from landuse.tiling import TilingConfig, build_county

SIZE = 64
PARTITIONS = 32  # ~12 tiles a task: a lost task is a small share of the work
KILL_AFTER_TASKS = 4  # of the scoring stage's PARTITIONS: kill once both executors are busy
KILL_BY_TASKS = 10  # ... or at this count anyway (progress is sampled every 0.2 s)

DRIVER = textwrap.dedent(
    """
    import json, sys, threading, time
    from landuse.scoring.spark import score_on_spark
    from landuse.spark import local_spark

    master, conf, source, bundle, out, parts = sys.argv[1:7]
    spark = local_spark("landuse-fault-test", master=master, conf=json.loads(conf))
    sc = spark.sparkContext
    tracker = sc.statusTracker()
    done = threading.Event()

    def report():
        while not done.wait(0.2):
            stages = []
            for sid in tracker.getActiveStageIds():
                info = tracker.getStageInfo(sid)
                if info is not None:
                    stages.append([sid, info.numTasks, info.numCompletedTasks,
                                   info.numActiveTasks, info.numFailedTasks])
            print("PROGRESS " + json.dumps(stages), flush=True)

    threading.Thread(target=report, daemon=True).start()
    result = score_on_spark(spark, source, bundle, out, batch_size=8, partitions=int(parts))
    done.set()
    stages = {}
    for jid in tracker.getJobIdsForGroup():
        for sid in tracker.getJobInfo(jid).stageIds:
            info = tracker.getStageInfo(sid)
            if info is not None:
                stages[sid] = {"tasks": info.numTasks, "completed": info.numCompletedTasks,
                               "failed": info.numFailedTasks, "attempt": info.currentAttemptId}
    spark.stop()
    print("RESULT " + json.dumps({"tiles": result.tiles, "errors": result.errors,
                                  "seconds": result.seconds, "stages": stages,
                                  "outputs": {f"{c}/{y}": u for (c, y), u in
                                              result.outputs.items()}}), flush=True)
    """
)


def _heavy_onnx(size: int, n_classes: int, layers: int = 4, width: int = 64) -> Any:
    """NHWC float input -> ``layers`` 3x3 conv + ReLU -> global pool -> linear -> softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["image"], ["x0"], perm=[0, 3, 1, 2])]
    inits, x, c_in = [], "x0", 3
    for i in range(layers):
        weights = rng.normal(0, 0.1, (width, c_in, 3, 3)).astype(np.float32)
        inits += [numpy_helper.from_array(weights, f"w{i}"),
                  numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"],
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x, c_in = f"r{i}", width
    inits += [numpy_helper.from_array(rng.normal(0, 0.1, (width, n_classes)).astype(np.float32),
                                      "W"),
              numpy_helper.from_array(np.zeros(n_classes, np.float32), "B")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
              helper.make_node("MatMul", ["flat", "W"], ["xw"]),
              helper.make_node("Add", ["xw", "B"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "landuse_fault_heavy",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                       ["batch", n_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def heavy_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bundles") / "heavy"
    folder.mkdir()
    spec = PreprocessSpec(input_size=SIZE, scale=1 / 255)
    (folder / "model.onnx").write_bytes(
        _heavy_onnx(SIZE, len(labels.CLASSES)).SerializeToString())
    bundle = BundleSpec(
        schema_version=1, name="heavy-fault-test", classes=tuple(labels.CLASSES),
        preprocessing=spec, backbone="none", method="imported", formats=("onnx",),
        onnx_input="image", onnx_output="probabilities", outputs_probabilities=True,
    )
    (folder / "bundle.json").write_text(bundle.model_dump_json(indent=2))
    load_bundle(folder)  # valid before it goes anywhere near Spark
    return folder


@pytest.fixture(scope="module")
def many_tiles(tmp_path_factory: pytest.TempPathFactory, synthetic: Path) -> Path:
    """~380 64 px tiles: both synthetic counties, 2010 and 2016, on a 128 m grid."""
    root = tmp_path_factory.mktemp("fault-tiles")
    for county in counties.load_registry(str(synthetic / "counties.json")).values():
        build_county(county, [2010, 2016], str(root), TilingConfig(tile_size_m=128.0,
                                                                   tile_px=SIZE))
    return root


def _tree(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants (the worker JVM, its executor, Python workers)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cmd(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:  # gone, or a zombie
        return ""


def _all_spark_pids(work_dir: Path) -> list[psutil.Process]:
    """Every live process whose command line mentions the test's Spark work folder."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(work_dir) in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.mark.timeout(300)
def test_worker_killed_mid_scoring_job_completes_one_row_per_tile(
    many_tiles, heavy_bundle, tmp_path, assert_gone
):
    manifests = pd.concat(pd.read_parquet(p)
                          for p in sorted(many_tiles.glob("naip/*/*/manifest.parquet")))
    expected = manifests[manifests["status"] != "empty"]  # every tile with imagery
    assert 300 <= len(expected) <= 500

    t0 = time.monotonic()
    timings: dict[str, float] = {}
    work_dir = tmp_path / "spark"
    master = start_master(work_dir, port=free_port(), webui_port=free_port(), timeout_s=90)
    scaler = StandaloneCluster(master.url, master.web_url, work_dir=work_dir,
                               cores_per_worker=1, memory_per_worker="512m", max_workers=2)
    job: subprocess.Popen[str] | None = None
    seen: list[psutil.Process] = [psutil.Process(master.pid)]
    try:
        # Workers and the driver start together (JVM start-ups are most of this test's
        # time); the driver waits for both executors' cores before the job starts.
        scaler.request(2)
        # Their pids from the state file (a worker's /proc entry is briefly unreadable while
        # spark-class execs the JVM, so owned_workers() may not count it yet).
        workers = [w["pid"] for w in json.loads((work_dir / "workers.json").read_text())]
        assert len(workers) == 2
        seen += [psutil.Process(pid) for pid in workers]
        conf = {
            **scaler.executor_conf(),
            "spark.cores.max": "2",
            "spark.scheduler.minRegisteredResourcesRatio": "1.0",  # both executors from the start
            "spark.scheduler.maxRegisteredResourcesWaitingTime": "90s",
        }
        source = str(many_tiles / "naip" / "*" / "*" / "manifest.parquet")
        out = tmp_path / "predictions"
        driver_log = tmp_path / "driver.log"
        with open(driver_log, "w") as err:
            job = subprocess.Popen(
                [sys.executable, "-c", DRIVER, master.url, json.dumps(conf), source,
                 str(heavy_bundle), str(out), str(PARTITIONS)],
                stdout=subprocess.PIPE, stderr=err, text=True, env=os.environ.copy(),
            )
        lines: queue.Queue[str] = queue.Queue()
        stdout: list[str] = []
        threading.Thread(target=lambda: [lines.put(x) for x in job.stdout], daemon=True).start()
        scaler.wait(2, timeout_s=90, poll_s=0.3)

        # 1. Wait until the scoring stage is under way on both executors.
        started = time.monotonic()
        timings["cluster_up_s"] = started - t0
        at_kill: list[int] | None = None
        while at_kill is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                if job.poll() is not None:
                    pytest.fail("driver ended before the kill:\n" + driver_log.read_text()[-4000:])
                if time.monotonic() - started > 150:
                    pytest.fail("scoring never got under way:\n" + driver_log.read_text()[-4000:])
                continue
            stdout.append(line)
            if line.startswith("PROGRESS "):
                for stage in json.loads(line.split(" ", 1)[1]):
                    _, tasks, completed, active, _ = stage
                    if tasks != PARTITIONS or completed < KILL_AFTER_TASKS:
                        continue
                    if completed > PARTITIONS // 2:
                        pytest.fail(f"missed the window: {completed} tasks done already")
                    if active >= 2 or completed >= KILL_BY_TASKS:
                        at_kill = stage

        # 2. kill -9 the second worker and everything it started.
        victim = _tree(workers[-1])
        seen += victim + _tree(workers[0]) + _tree(job.pid)
        assert any("CoarseGrainedExecutorBackend" in _cmd(p) for p in victim)
        assert any("pyspark.daemon" in _cmd(p) for p in victim)  # its Python workers
        for proc in victim:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        killed_at = time.monotonic()
        timings["driver_to_kill_s"] = killed_at - started
        assert_gone(victim, "killed worker")

        # 3. The job finishes on the surviving worker.
        assert job.wait(timeout=180) == 0, driver_log.read_text()[-4000:]
        finished_after = time.monotonic() - killed_at
        while not lines.empty():
            stdout.append(lines.get())
        result = json.loads(next(x for x in reversed(stdout) if x.startswith("RESULT "))[7:])
    finally:
        if job is not None and job.poll() is None:  # a failed test: the driver and its JVM
            for proc in _tree(job.pid)[::-1]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            job.wait(timeout=10)
        scaler.stop_started()
        stop_master(work_dir)
    assert_gone(seen + _all_spark_pids(work_dir), "Spark")  # master, workers, driver

    # 4. Exactly one row per tile, each scored (no error rows), and Spark saw the loss.
    log = driver_log.read_text()
    assert result["tiles"] == len(expected)  # rows collected before de-duplication
    assert result["errors"] == 0
    scored = pd.concat(pd.read_parquet(u) for u in result["outputs"].values())
    assert len(scored) == len(expected)
    assert not scored.duplicated(["county", "year", "tile_id"]).any()
    assert sorted(zip(scored.county, scored.year, scored.tile_id, strict=True)) == sorted(
        zip(expected.county, expected.year, expected.tile_id, strict=True))
    assert scored["error"].isna().all() and scored["predicted"].notna().all()
    assert "Lost executor" in log or "ExecutorLostFailure" in log, log[-4000:]
    figures = {
        "tiles": len(expected), "rows": len(scored), "partitions": PARTITIONS,
        "stage_at_kill": at_kill,
        "stages": result["stages"], "job_s": round(result["seconds"], 1),
        "finished_after_kill_s": round(finished_after, 1),
        "killed_processes": len(victim),
        **{k: round(v, 1) for k, v in timings.items()},
    }
    for line in log.splitlines():
        if any(w in line for w in ("Lost", "Resubmit", "FetchFailed")):
            print("LOG " + line[:300])
    print("FIGURES " + json.dumps(figures))
