"""Training: the paper's recipe, one step learns, exact resume, atomic checkpoints, DDP on gloo."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from deeplab_edu import runtime
from deeplab_edu.checkpoint import load_checkpoint, read_metrics, save_checkpoint
from deeplab_edu.data.toy import make_toy_voc
from deeplab_edu.data.voc import VOCSegmentation
from deeplab_edu.models import is_new_layer
from deeplab_edu.train import (
    TrainConfig,
    build_model,
    learning_rate,
    make_optimizer,
    param_groups,
    segmentation_loss,
    train,
)

REPO = Path(__file__).resolve().parents[1]


def tiny(**changes) -> TrainConfig:
    """A network of width 1/16 on 33-pixel crops: a training step takes milliseconds."""
    values = dict(width=0.0625, crop=33, batch_size=2, iterations=6, lr_step=4, checkpoint_every=2)
    values.update(changes)
    return TrainConfig.fast(**values)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    return make_toy_voc(tmp_path_factory.mktemp("toy"), n_train=6, n_val=2, size=40, seed=0)


@pytest.fixture(scope="module")
def toy_train(toy_dir):
    return VOCSegmentation(toy_dir, "train")


def test_defaults_are_the_papers():
    config = TrainConfig()
    assert (config.variant, config.width, config.init) == ("DeepLab-LargeFOV", 1.0, "imagenet")
    assert (config.lr, config.lr_new_multiplier, config.lr_bias_multiplier) == (1e-3, 10.0, 2.0)
    assert (config.momentum, config.weight_decay) == (0.9, 5e-4)
    assert (config.lr_step, config.lr_gamma, config.iterations) == (2000, 0.1, 6000)
    assert (config.batch_size, config.crop, config.flip) == (20, 321, True)
    assert learning_rate(config, 0) == learning_rate(config, 1999) == 1e-3
    assert learning_rate(config, 2000) == pytest.approx(1e-4)
    assert learning_rate(config, 5999) == pytest.approx(1e-5)


def test_fast_changes_values_only():
    fast = TrainConfig.fast()
    assert type(fast) is TrainConfig and fast.variant == "DeepLab-LargeFOV"
    assert (fast.crop - 1) % 8 == 0 and fast.init == "random" and fast.dataset == "toy"
    assert TrainConfig.from_dict(fast.to_dict()) == fast
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({**fast.to_dict(), "learning_rate": 1})


def test_param_groups_follow_the_caffe_solver():
    config = TrainConfig()
    model = build_model(tiny())
    groups = {g["name"]: g for g in param_groups(model, config)}
    assert set(groups) == {"pretrained weights", "pretrained biases", "new weights", "new biases"}
    expected = {
        "pretrained weights": (1, 5e-4),
        "pretrained biases": (2, 0.0),
        "new weights": (10, 5e-4),
        "new biases": (20, 0.0),
    }
    for name, (mult, decay) in expected.items():
        assert (groups[name]["lr_mult"], groups[name]["weight_decay"]) == (mult, decay)
    new = {id(p) for p in groups["new weights"]["params"] + groups["new biases"]["params"]}
    assert new == {id(p) for p in model.head.fc8.parameters()}
    count = sum(len(g["params"]) for g in groups.values())
    assert count == len(list(model.parameters()))
    optimizer = make_optimizer(model, config)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [1e-3 * g["lr_mult"] for g in optimizer.param_groups]
    )


def test_param_groups_give_every_aspp_branch_classifier_the_new_layers_rate():
    model = build_model(tiny(variant="DeepLab-ASPP-256"))
    groups = {g["name"]: g for g in param_groups(model, TrainConfig())}
    new = {id(p) for p in groups["new weights"]["params"] + groups["new biases"]["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in new}
    assert names == {
        f"head.branches.{branch}.fc8.{p}" for branch in range(4) for p in ("weight", "bias")
    }
    assert new == {id(p) for head in model.heads() for p in head.fc8.parameters()}
    assert len(groups["pretrained weights"]["params"]) == 13 + 2 * 4  # conv1_1..conv5_3, fc6, fc7


def test_loss_ignores_void_and_checks_alignment():
    scores = torch.randn(1, 21, 5, 5, requires_grad=True)
    target = torch.full((1, 33, 33), 255, dtype=torch.int64)
    assert segmentation_loss(scores, target).item() == 0.0  # all void: zero, still a graph
    target[0, 0, 0] = 3  # the one labelled cell is position (0, 0)
    expected = -torch.log_softmax(scores[0, :, 0, 0], 0)[3]
    assert torch.allclose(segmentation_loss(scores, target), expected)
    with pytest.raises(ValueError, match=r"from pixel 0 have size \(6, 6\) but the scores"):
        segmentation_loss(scores, torch.zeros(1, 48, 48, dtype=torch.int64))
    # the plain DeepLab's cells learn pixel 8 i + 1: (0, 0) is then not a cell's pixel, (1, 1) is
    target = torch.full((1, 34, 34), 255, dtype=torch.int64)
    target[0, 0, 0] = 3
    assert segmentation_loss(scores, target, offset=1).item() == 0.0
    target[0, 1, 1] = 3
    assert torch.allclose(segmentation_loss(scores, target, offset=1), expected)


def test_one_step_reduces_the_loss_on_a_fixed_batch(toy_train):
    config = tiny()
    runtime.seed_everything(0)
    model = build_model(config)
    optimizer = make_optimizer(model, config)
    images = torch.stack([toy_train[i][0] for i in range(2)])[..., :33, :33]
    from deeplab_edu.data.transforms import normalize

    x = normalize(images)
    y = torch.stack([toy_train[i][1] for i in range(2)])[..., :33, :33]

    def loss() -> torch.Tensor:
        model.eval()  # no dropout: the same function before and after the step
        with torch.no_grad():
            return segmentation_loss(model(x), y)

    before = loss()
    model.train()
    segmentation_loss(model(x), y).backward()
    optimizer.step()
    assert loss() < before


def test_training_is_deterministic_and_resumes_exactly(toy_train, tmp_path):
    config = tiny()
    reference = train(config, tmp_path / "a", dataset=toy_train, progress=False)

    class Interrupted(Exception):
        pass

    def stop(iteration, loss):
        if iteration == 3:  # killed after iteration 3; the last checkpoint holds iteration 2
            raise Interrupted

    with pytest.raises(Interrupted):
        train(config, tmp_path / "b", dataset=toy_train, on_step=stop, progress=False)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["iteration"] == 2
    with pytest.raises(FileExistsError, match="resume"):
        train(config, tmp_path / "b", dataset=toy_train, progress=False)
    resumed = train(config, tmp_path / "b", resume=True, dataset=toy_train, progress=False)
    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    losses = [[r["loss"] for r in read_metrics(tmp_path / d)] for d in ("a", "b")]
    assert len(losses[0]) == config.iterations and losses[0] == losses[1]
    lrs = [r["lr"] for r in read_metrics(tmp_path / "a")]
    assert lrs == pytest.approx([learning_rate(config, i) for i in range(config.iterations)])
    again = train(config, tmp_path / "c", dataset=toy_train, progress=False)
    assert all(
        torch.equal(a, b) for a, b in zip(reference.parameters(), again.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="another configuration"):
        train(tiny(lr=0.5), tmp_path / "c", resume=True, dataset=toy_train, progress=False)


def test_a_checkpoint_digest_hashes_values_not_memory_layout(tmp_path):
    # channels-last weights (a user's choice for speed): 1x1 kernels in that layout have a last
    # stride > 1 although PyTorch calls them contiguous, which a byte view of them refuses
    state = build_model(tiny()).to(memory_format=torch.channels_last).state_dict()
    assert any(v.ndim == 4 and v.stride(-1) != 1 and v.is_contiguous() for v in state.values())
    save_checkpoint({"model": state}, tmp_path / "channels_last.pt")
    default = {k: v.clone(memory_format=torch.contiguous_format) for k, v in state.items()}
    assert all(v.stride(-1) == 1 for v in default.values() if v.ndim)
    save_checkpoint({"model": default}, tmp_path / "default.pt")
    digests = [load_checkpoint(tmp_path / f)["sha256"] for f in ("channels_last.pt", "default.pt")]
    assert digests[0] == digests[1]  # the same values, laid out differently


def test_a_killed_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"iteration": 2, "weights": torch.arange(4.0)}, path)
    code = f"""
import os, signal, torch
from deeplab_edu import checkpoint
def dying_save(obj, handle, *args, **kwargs):
    handle.write(b"PK\\x03\\x04 half a zip file")
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
checkpoint.save_checkpoint({{"iteration": 4, "weights": torch.zeros(4)}}, {str(path)!r})
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True)
    assert result.returncode != 0  # killed
    state = load_checkpoint(path)
    assert state["iteration"] == 2 and torch.equal(state["weights"], torch.arange(4.0))
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 half a zip file")
    with pytest.raises(ValueError, match="not a loadable checkpoint"):
        load_checkpoint(tmp_path / "broken.pt")


class Payload:
    """Not a tensor: a weights_only load must refuse to rebuild it."""


def test_checkpoints_never_unpickle_code(tmp_path):
    torch.save({"format": 1, "payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.slow  # seconds: `make unit` leaves it out
def test_full_mode_code_path_with_imagenet_conversion(toy_train, tmp_path):
    """The paper's configuration (full width, VGG-16 initialisation) on a 33-pixel crop; the
    VGG-16 weights are torchvision's random initialisation instead of a download."""
    from torchvision.models import vgg16

    config = TrainConfig(iterations=1, batch_size=1, crop=33, num_workers=0)
    torch.manual_seed(0)
    weights = vgg16(weights=None).state_dict()
    model = train(config, tmp_path, dataset=toy_train, vgg_state_dict=weights, progress=False)
    step = model.features.conv1_1.weight - weights["features.0.weight"]
    assert 0 < step.abs().max() < 1e-2  # one small SGD step away from the converted weights
    assert read_metrics(tmp_path)[0]["lr"] == 1e-3
    with pytest.raises(ValueError, match="width=1.0"):
        build_model(TrainConfig(width=0.5), vgg_state_dict=weights)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, toy_dir: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    model = train(
        tiny(iterations=3),
        Path(out) / "run",
        dataset=VOCSegmentation(toy_dir, "train"),
        progress=False,
    )
    torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_msc_is_a_second_stage_as_released(toy_train, tmp_path):
    stage_one = train(tiny(iterations=2), tmp_path / "one", dataset=toy_train, progress=False)
    init = str(tmp_path / "one" / "checkpoint.pt")
    with pytest.raises(ValueError, match="second stage"):
        tiny(msc=True).validate()
    config = tiny(msc=True, init=init, iterations=3, lr=0.5)  # a large step: changes show
    model = build_model(config)
    before = stage_one.state_dict()
    for name, value in model.state_dict().items():  # every stage-one weight is loaded
        if not name.startswith("msc."):
            assert torch.equal(value, before[name]), name
    # trained: the branches and fc8 (the released configuration), all at x1 (biases x2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if is_new_layer(n)}
    groups = {g["name"]: g["lr_mult"] for g in param_groups(model, config)}
    assert groups == {"new weights": 1.0, "new biases": 2.0}
    # initialised as released: branch convolutions 0.001 (pool4's 1x1 0.005), classifier 0.01
    stds = [
        (branch[0].weight.std().item(), branch[3].weight.std().item())
        for branch in model.msc.branches
    ]
    expected = [(1e-3, 1e-3)] * 4 + [(1e-3, 5e-3)]
    for got, want in zip(stds, expected, strict=True):
        assert got == pytest.approx(want, rel=0.2)
    assert model.msc.classifier.weight.std().item() == pytest.approx(1e-2, rel=0.2)
    # with the new classifier at zero, DeepLab-MSc predicts exactly what stage one did
    x = torch.randn(1, 3, 41, 45)
    with torch.no_grad():
        zeroed = copy.deepcopy(model)
        zeroed.msc.classifier.weight.zero_()
        torch.testing.assert_close(
            zeroed.eval().predict(x), stage_one.eval().predict(x), rtol=0, atol=0
        )
    trained = train(config, tmp_path / "two", dataset=toy_train, progress=False)
    after = trained.state_dict()
    for name, value in after.items():
        if is_new_layer(name):
            assert not torch.equal(value, model.state_dict()[name]), name
        else:  # the backbone, fc6 and fc7 are untouched
            assert torch.equal(value, before[name]), name


@pytest.mark.slow  # seconds: `make unit` leaves it out
def test_ddp_on_gloo_with_two_processes_keeps_replicas_in_sync(toy_dir, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(toy_dir), str(tmp_path)), nprocs=2)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name
    log = read_metrics(tmp_path / "run")
    assert [r["iteration"] for r in log] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    initial = build_model(tiny())  # same seed: the weights before training
    changed = [not torch.equal(v, initial.state_dict()[k]) for k, v in states[0].items()]
    assert any(changed)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch_size"] == 2


@pytest.mark.slow  # seconds: `make unit` leaves it out
def test_torchrun_launches_the_command_line_on_two_processes(toy_dir, tmp_path):
    """The documented multi-GPU command, with the CPU's gloo back end instead of NCCL."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port",
        str(_free_port()),
        "-m",
        "deeplab_edu",
        "train",
        "--fast",
        "--dataset",
        str(toy_dir),
        "--width",
        "0.0625",
        "--crop",
        "33",
        "--batch-size",
        "2",
        "--iterations",
        "2",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["iteration"] for r in read_metrics(tmp_path / "run")] == [1, 2]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["iteration"] == 2


def test_train_never_overwrites_another_runs_files(toy_train, tmp_path):
    config = tiny(iterations=2)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text('{"variant": "someone else\'s"}')
    (folder / "metrics.jsonl").write_text('{"iteration": 1, "loss": 1.0}\n')
    for resume in (False, True):
        with pytest.raises(FileExistsError, match="config.json exists and was not written by th"):
            train(config, folder, resume=resume, dataset=toy_train, progress=False)
    assert (folder / "config.json").read_text() == '{"variant": "someone else\'s"}'
    assert (folder / "metrics.jsonl").read_text() == '{"iteration": 1, "loss": 1.0}\n'
    # this very run's start (stopped before its first checkpoint) is started again
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    train(config, folder, resume=True, dataset=toy_train, progress=False)
    assert [r["iteration"] for r in read_metrics(folder)] == [1, 2]


def test_two_runs_on_one_folder_do_not_mix(toy_train, tmp_path):
    from deeplab_edu.outputs import run_lock

    folder = tmp_path / "run"
    with run_lock(folder):  # another run holds the folder
        with pytest.raises(BlockingIOError, match=r"in use by another training run \(process \d+"):
            train(tiny(iterations=2), folder, dataset=toy_train, progress=False)
    assert not (folder / "checkpoint.pt").exists() and not (folder / "metrics.jsonl").exists()
    train(tiny(iterations=2), folder, dataset=toy_train, progress=False)  # released: it runs
    assert [r["iteration"] for r in read_metrics(folder)] == [1, 2]


def test_each_variant_trains_on_its_released_crop_unless_told():
    assert TrainConfig(variant="DeepLab").crop == 306  # 8k + 2, labels from pixel 1
    assert TrainConfig(variant="DeepLab-LargeFOV").crop == 321  # 32k - 31
    assert TrainConfig(variant="DeepLab", crop=321).crop == 321
    assert TrainConfig.fast(variant="DeepLab").crop == 97  # fast mode's, for every variant
    with pytest.raises(ValueError, match="unknown DeepLab variant"):
        TrainConfig(variant="DeepLab-3x3")


def _as_format_3(path: Path, monkeypatch) -> None:
    """Rewrite the checkpoint at ``path`` as the package wrote it before the head became a
    module (format 3: keys "fc6.weight", ASPP's "fc6.2.weight")."""
    from deeplab_edu import checkpoint

    state = {k: v for k, v in load_checkpoint(path).items() if k not in ("format", "sha256")}
    old = {}
    for name, tensor in state["model"].items():
        parts = name.split(".")
        if parts[0] == "head":
            parts = parts[1:]
            if parts[0] == "branches":  # branches.2.fc6.weight -> fc6.2.weight
                parts = [parts[2], parts[1], parts[3]]
        old[".".join(parts)] = tensor
    state["model"] = old
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "FORMAT_VERSION", 3)
        save_checkpoint(state, path)


@pytest.mark.parametrize("variant", ["DeepLab-LargeFOV", "DeepLab-ASPP-256"])
def test_checkpoints_from_before_the_head_module_load_renamed(
    variant, toy_train, tmp_path, monkeypatch
):
    config = tiny(variant=variant, iterations=4)
    reference = train(config, tmp_path / "a", dataset=toy_train, progress=False)

    def stop(iteration, loss):
        if iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "b", dataset=toy_train, on_step=stop, progress=False)
    path = tmp_path / "b" / "checkpoint.pt"
    _as_format_3(path, monkeypatch)
    state = load_checkpoint(path)
    assert state["format"] == 3 and "fc6.weight" not in state["model"]
    model = build_model(config)
    model.load_state_dict(state["model"])  # renamed on loading: the same network
    if variant == "DeepLab-LargeFOV":  # its parameters keep their order: it resumes exactly
        resumed = train(config, tmp_path / "b", resume=True, dataset=toy_train, progress=False)
        for (name, a), b in zip(
            reference.state_dict().items(), resumed.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), name
    else:  # ASPP's parameters come in another order now: its optimiser state does not fit
        with pytest.raises(ValueError, match="before the head became a module.*cannot be resumed"):
            train(config, tmp_path / "b", resume=True, dataset=toy_train, progress=False)
