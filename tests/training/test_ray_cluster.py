"""A node of a (local, multi-node) Ray cluster is lost mid-run: its chunk runs again elsewhere.

Ray's ``cluster_utils.Cluster`` starts a head and worker nodes as separate Ray nodes on this
machine; removing a node kills its raylet and workers as a lost machine would.
"""

import threading
import time

import numpy as np
import pytest

from runoff.run.folder import CHECKPOINT_DIR
from runoff.training.train import train_run

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from ray_procs import checkpoint_epoch, task_processes  # noqa: E402

# Every Ray task here runs with one torch thread (one CPU per task); the local runs they are
# compared with bit for bit run with one too, so both are the same computation on any CPU.
pytest.importorskip("torch").set_num_threads(1)
from runoff.training.backends.ray import RayBackend  # noqa: E402

RUN = dict(dataset="digits", k=6, epochs=60, progress=False)


def _node_running(nodes, task_name):
    """The node whose raylet started the worker now running ``task_name`` (Ray titles a busy
    worker ``ray::TASK``; workers are children of their node's raylet)."""
    for _, parent in task_processes(task_name):
        for node in nodes:
            if any(p.process.pid == parent for p in node.all_processes.get("raylet", [])):
                return node
    pytest.fail(f"no node runs {task_name}")


@pytest.fixture()
def cluster():
    # the head has no CPU, so every chunk runs on a worker node
    c = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [c.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def test_lost_node_is_retried_elsewhere_with_identical_logits(tmp_path, cluster):
    c, nodes = cluster
    reference = train_run(tmp_path / "local", chunk_size=3, **RUN).scores  # the same chunks as below
    run = tmp_path / "ray"
    outcome = {}

    def drive():
        try:
            outcome["result"] = train_run(run, chunk_size=3, checkpoint_min_interval=0,
                                          backend=RayBackend(workers=2), **RUN)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            outcome["error"] = exc

    driver = threading.Thread(target=drive)
    driver.start()
    first = run / CHECKPOINT_DIR / "models-00000-00002.pt"
    t0 = time.monotonic()
    while not 3 <= checkpoint_epoch(first) < 50:
        assert time.monotonic() - t0 < 180 and driver.is_alive(), f"models 0..2 did not start: {outcome}"
        time.sleep(0.02)
    node = _node_running(nodes, "runoff-chunk-00000-00002")
    c.remove_node(node, allow_graceful=False)  # the machine training models 0..2 is lost
    c.add_node(num_cpus=1)  # its replacement joins
    driver.join(timeout=300)
    assert not driver.is_alive() and "error" not in outcome, outcome
    res = outcome["result"]
    assert res.summary.retries >= 1 and res.summary.trained == 6
    np.testing.assert_array_equal(res.scores, reference)
