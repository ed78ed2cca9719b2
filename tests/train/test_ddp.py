"""Training on two CPU processes (DDP, gloo): each stage's tiny preset for two steps with devices=2 against one
process with the doubled batch (same samples, same losses, same weights), a cut-and-resumed run, a skipped
object, a NaN on one process, and the `lrmesh train` command itself (Lightning launching its own processes)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lrmesh.checkpoints import load_model
from lrmesh.data.multiview import write_object
from lrmesh.data.synthetic import random_object
from lrmesh.errors import LrmeshError
from lrmesh.train.config import load_train_config
from lrmesh.train.run import train
from tests.train.helpers import logged_losses

REPO = Path(__file__).resolve().parents[2]
WORLD = 2
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # two processes share the CPU


class Recorder(Callback):
    """Keeps the sample indices of each step's batch; `poison`: (rank, step) whose images become NaN."""

    def __init__(self, poison: list[int] | None = None):
        self.samples: dict[int, list[int]] = {}
        self.poison = poison

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.samples[trainer.global_step] = batch["sample_index"].tolist()
        if self.poison == [trainer.global_rank, trainer.global_step]:
            batch["target_images"].fill_(float("nan"))


def _cfg(name: str, root: Path, output: Path, *extra: str):
    return load_train_config(name, [f"data.root={root}", f"output={output}", "loss.lpips=0", "log_every=1",
                                    "accelerator=cpu", *extra])



def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rank_main(rank: int, spec_file: str) -> None:
    """One process of the two: the runs of the spec in order, devices=2; what it saw goes to rank{rank}.json.
    LOCAL_RANK in the environment makes Lightning join these processes rather than start its own."""
    spec = json.loads(Path(spec_file).read_text())
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(spec["port"]), LOCAL_RANK=str(rank), NODE_RANK="0",
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    results = {}
    for run in spec["runs"]:
        recorder = Recorder(run.get("poison"))
        cfg = _cfg(run["config"], Path(run["root"]), Path(run["output"]), f"devices={WORLD}", *run["overrides"])
        ckpt = Path(run["output"]) / "checkpoints" / "last.ckpt"
        before = _sha(ckpt) if ckpt.is_file() else None
        result = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                train(cfg, resume=run.get("resume", False), progress=False, callbacks=[recorder])
            except LrmeshError as err:
                result.update(error=f"{type(err).__name__}: {err}", reported_elsewhere=err.reported_elsewhere)
        result["samples"] = recorder.samples
        result["skipped"] = sorted({str(w.message).split("'")[1] for w in caught
                                    if "skipping training object" in str(w.message)})
        result["checkpoint_kept"] = before is not None and _sha(ckpt) == before
        results[run["name"]] = result
    Path(spec_file).with_name(f"rank{rank}.json").write_text(json.dumps(results))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(runs: list[dict], folder: Path) -> list[dict]:
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"port": _free_port(), "runs": runs}))
    code = f"from tests.train.test_ddp import _rank_main; import sys; _rank_main(int(sys.argv[1]), {str(spec)!r})"
    env = {**os.environ, **ONE_THREAD}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(rank)], cwd=REPO, env=env, stderr=subprocess.PIPE,
                              text=True) for rank in range(WORLD)]
    errors = [p.communicate(timeout=900)[1] for p in procs]
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err[-4000:]
    return [{name: {**r, "samples": {int(k): v for k, v in r["samples"].items()}}
             for name, r in json.loads((folder / f"rank{rank}.json").read_text()).items()} for rank in range(WORLD)]


def test_pixel_losses_are_means_over_objects_so_a_split_batch_averages():
    from lrmesh.train.losses import masked_l1, normal_consistency

    # Object 0: two covered pixels with errors 1 and 3 -> 2; object 1: nothing covered -> 0. Mean: 1.
    render = torch.zeros(2, 1, 1, 2, 2)
    target = torch.tensor([[[[[1.0, 3.0], [5.0, 7.0]]]], [[[[9.0, 9.0], [9.0, 9.0]]]]])
    mask = torch.tensor([[[[[1.0, 1.0], [0.0, 0.0]]]], [[[[0.0, 0.0], [0.0, 0.0]]]]])
    assert masked_l1(render, target, mask).item() == 1.0
    halves = [masked_l1(render[i:i + 1], target[i:i + 1], mask[i:i + 1]) for i in range(2)]
    assert [h.item() for h in halves] == [2.0, 0.0]
    # Normals: object 0 sees cos 1 and 0 on its two pixels -> 0.5; object 1 none -> 0. Mean: 0.25.
    up, side = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])
    rendered = up.view(1, 1, 3, 1, 1).expand(2, 1, 3, 2, 2)
    wanted = torch.stack([up, side, up, up]).T.reshape(3, 2, 2).expand(2, 1, 3, 2, 2)
    assert normal_consistency(rendered, wanted, mask).item() == pytest.approx(0.25)
    assert normal_consistency(rendered[:1], wanted[:1], mask[:1]).item() == pytest.approx(0.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Three objects (two to train on, one held out; no occupancy: the tiny presets render), and a copy whose first
    training object is unreadable."""
    root = tmp_path_factory.mktemp("ddp-data")
    for seed in range(3):
        write_object(random_object(seed), root / "good", f"obj{seed}", "training", 10, 32, seed, "test",
                     occupancy=False)
    shutil.copytree(root / "good", root / "broken")
    (root / "broken" / "rendering_random_32views" / "obj0" / "cameras.npz").unlink()
    return {"good": root / "good", "broken": root / "broken"}


@pytest.fixture(scope="module")
def single(data, tmp_path_factory) -> dict:
    """One process, batch 2: stage 1, stage 2 (from stage 1), stage 1 on the broken data."""
    out = tmp_path_factory.mktemp("single")
    runs = {"stage1": ("tiny-stage1", data["good"], []),
            "stage2": ("tiny-stage2", data["good"], [f"init={out / 'stage1' / 'stage1.safetensors'}"]),
            "broken": ("tiny-stage1", data["broken"], ["max_steps=1"])}
    results = {}
    for name, (config, root, extra) in runs.items():
        recorder = Recorder()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(_cfg(config, root, out / name, "devices=1", f"batch_size={WORLD}", *extra), progress=False,
                  callbacks=[recorder])
        skipped = sorted({str(w.message).split("'")[1] for w in caught if "skipping training object" in str(w.message)})
        results[name] = {"samples": recorder.samples, "losses": logged_losses(out / name), "output": out / name,
                         "skipped": skipped}
    return results


@pytest.mark.slow
def test_two_processes_draw_the_doubled_batch_and_train_as_one_process_does(data, single, tmp_path):
    ddp = tmp_path / "ddp"
    init = f"init={single['stage1']['output'] / 'stage1.safetensors'}"  # both stage-2 runs start from one file
    runs = [
        {"name": "stage1", "config": "tiny-stage1", "root": str(data["good"]), "output": str(ddp / "stage1"),
         "overrides": []},
        {"name": "stage2", "config": "tiny-stage2", "root": str(data["good"]), "output": str(ddp / "stage2"),
         "overrides": [init]},
        {"name": "cut", "config": "tiny-stage2", "root": str(data["good"]), "output": str(ddp / "cut"),
         "overrides": [init, "max_steps=1"]},
        {"name": "resumed", "config": "tiny-stage2", "root": str(data["good"]), "output": str(ddp / "cut"),
         "overrides": [init], "resume": True},
        {"name": "broken", "config": "tiny-stage1", "root": str(data["broken"]), "output": str(ddp / "broken"),
         "overrides": ["max_steps=1"]},
        # A NaN on process 1 only, at step 2 of a resumed run: both stop there, the checkpoint stays.
        {"name": "nan", "config": "tiny-stage2", "root": str(data["good"]), "output": str(ddp / "cut"),
         "overrides": [init, "max_steps=3"], "resume": True, "poison": [1, 2]},
    ]
    ranks = _run_two_processes(runs, tmp_path)

    for name, steps in (("stage1", [0, 1]), ("stage2", [0, 1]), ("broken", [0])):
        expected = single[name]["samples"]
        assert sorted(expected) == steps
        for step in steps:
            drawn = [ranks[r][name]["samples"][step] for r in range(WORLD)]
            assert not set(drawn[0]) & set(drawn[1]), (name, step, drawn)
            assert drawn[0] + drawn[1] == expected[step], (name, step)  # rank r: the r-th half of the batch
        got = logged_losses(ddp / name)
        assert sorted(got) == steps
        for step in steps:
            assert got[step] == pytest.approx(single[name]["losses"][step], rel=1e-5, abs=1e-7), (name, step)
    # The weights after the two steps: the single process's, to float rounding (Adam divides by the gradient's size,
    # so a weight whose gradient is almost zero moves its rounding up to lr scale: 1e-5 is 1/40 of a step here).
    for stage in ("stage1", "stage2"):
        a = load_model(single[stage]["output"] / f"{stage}.safetensors").state_dict()
        b = load_model(ddp / stage / f"{stage}.safetensors").state_dict()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=f"{stage} {key}")
        # Process 0 alone writes: the files of the one-process run, one validation image among them.
        assert _files(ddp / stage) == _files(single[stage]["output"])
    assert sorted(p.name for p in (ddp / "stage1" / "images").iterdir()) == ["val_0000002.png"]

    # Cut after step 1, resumed with devices=2: the samples and losses of the uninterrupted run.
    for r in range(WORLD):
        assert ranks[r]["cut"]["samples"] == {0: ranks[r]["stage2"]["samples"][0]}
        assert ranks[r]["resumed"]["samples"] == {1: ranks[r]["stage2"]["samples"][1]}
    cut, full = logged_losses(ddp / "cut"), logged_losses(ddp / "stage2")
    assert sorted(cut) == [0, 1]
    for step in (0, 1):
        assert cut[step] == pytest.approx(full[step], rel=1e-5, abs=1e-7)

    # The unreadable object is named by the process that met it and replaced as on one process.
    assert single["broken"]["skipped"] == ["obj0"]
    assert sorted({n for r in range(WORLD) for n in ranks[r]["broken"]["skipped"]}) == ["obj0"]

    # A NaN on one process stops both at the same step with the same message, reported by process 0 only.
    errors = [ranks[r]["nan"] for r in range(WORLD)]
    assert all(e["error"].startswith("TrainingDiverged: loss is nan at step 2") for e in errors)
    assert errors[0]["error"] == errors[1]["error"]
    assert [e["reported_elsewhere"] for e in errors] == [False, True]
    assert all(e["checkpoint_kept"] for e in errors)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **ONE_THREAD}
    return subprocess.run([sys.executable, "-m", "lrmesh.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_the_train_command_on_two_processes_matches_one_process_and_reports_once(data, single, tmp_path):
    # Lightning starts the second process itself (it reruns the command with LOCAL_RANK=1).
    common = ["train", "tiny-stage1", f"data.root={data['good']}", "devices=2", "accelerator=cpu", "max_steps=2",
              "loss.lpips=0", "log_every=1", "-q"]
    done = _cli(*common, f"output={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-4000:]
    assert [line for line in done.stderr.splitlines() if line.startswith("lrmesh:")] == [
        f"lrmesh: trained to step 2; model: {tmp_path / 'run'}"]
    got = logged_losses(tmp_path / "run")
    assert sorted(got) == [0, 1]
    for step in (0, 1):
        assert got[step] == pytest.approx(single["stage1"]["losses"][step], rel=1e-5, abs=1e-7)
    assert sorted(p.name for p in (tmp_path / "run" / "images").iterdir()) == ["val_0000002.png"]

    failed = _cli(*common, f"output={tmp_path / 'nan'}", "loss.mse=.nan")
    assert failed.returncode == 2
    lines = [line for line in failed.stderr.splitlines() if line.startswith("lrmesh:")]
    assert len(lines) == 1 and lines[0].startswith("lrmesh: error: loss is nan at step 0"), failed.stderr[-4000:]
