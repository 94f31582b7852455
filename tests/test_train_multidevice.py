"""Data parallelism: 2 (virtual CPU) devices must train like 1 device.

Runs in a subprocess because XLA_FLAGS must be set before jax is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

SCRIPT = textwrap.dedent(r"""
    import os, sys, tempfile
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, TESTS_DIR)

    import jax
    import numpy as np
    from jax.sharding import NamedSharding

    from test_train import OPTIM, SCHEDULE, TinyDataset, TinyNet, init_variables, quick_loop, replace_loop
    from jaxnas.train import CheckpointStore, check_batch_size, evaluate, fit, make_mesh

    assert len(jax.devices()) == 2, jax.devices()
    model = TinyNet()
    variables = init_variables(model)
    loop = quick_loop(epochs=2, eval_batch_size=6)  # 13 test examples: the last eval batch is padded
    one, two = make_mesh(jax.devices()[:1]), make_mesh()
    tmp = tempfile.mkdtemp()

    s1, h1 = fit(model, variables, TinyDataset(), workdir=f"{tmp}/one", mesh=one, optim=OPTIM,
                 schedule=SCHEDULE, **loop)
    s2, h2 = fit(model, variables, TinyDataset(), workdir=f"{tmp}/two", mesh=two, optim=OPTIM,
                 schedule=SCHEDULE, **loop)
    for leaf in jax.tree.leaves(s2.params):
        assert isinstance(leaf.sharding, NamedSharding) and leaf.sharding.is_fully_replicated
        assert len(leaf.sharding.device_set) == 2
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5),
                 s1.params, s2.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5),
                 s1.batch_stats, s2.batch_stats)  # BN saw global-batch statistics
    e1 = [r for r in h1 if r["split"] == "test"]
    e2 = [r for r in h2 if r["split"] == "test"]
    assert [r["count"] for r in e2] == [13, 13]
    np.testing.assert_allclose([r["loss"] for r in e1], [r["loss"] for r in e2], rtol=1e-5)

    # Resume on 2 devices (sharded checkpoint restore) equals the uninterrupted 2-device run.
    fit(model, variables, TinyDataset(), workdir=f"{tmp}/resume", mesh=two, optim=OPTIM, schedule=SCHEDULE,
        **replace_loop(loop, max_steps=3))
    assert CheckpointStore(f"{tmp}/resume/checkpoints").latest_step() == 3
    s3, _ = fit(model, variables, TinyDataset(), workdir=f"{tmp}/resume", mesh=two, optim=OPTIM,
                schedule=SCHEDULE, **loop)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), s2.params, s3.params)

    # Evaluation over 2 devices counts every example.
    r1 = evaluate(model, s2.variables(), TinyDataset(), "test", batch_size=4, mesh=one)
    r2 = evaluate(model, s2.variables(), TinyDataset(), "test", batch_size=4, mesh=two)
    assert r1["count"] == r2["count"] == 13 and abs(r1["loss"] - r2["loss"]) < 1e-5

    # A batch size the devices cannot split is a clear error.
    try:
        check_batch_size(7, two)
    except ValueError as e:
        assert "multiple of the device count (2)" in str(e), e
    else:
        raise AssertionError("batch_size=7 on 2 devices was accepted")
    try:
        fit(model, variables, TinyDataset(), workdir=f"{tmp}/bad", mesh=two,
            **replace_loop(loop, batch_size=5))
    except ValueError as e:
        assert "batch_size=5" in str(e), e
    else:
        raise AssertionError("fit accepted batch_size=5 on 2 devices")
    import shutil
    shutil.rmtree(tmp)
    print("MULTIDEVICE OK")
""")


def test_two_devices_match_one_device():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("XLA_FLAGS", None)
    script = f"TESTS_DIR = {str(TESTS)!r}\n" + SCRIPT
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "MULTIDEVICE OK" in proc.stdout
