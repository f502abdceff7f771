"""Every invalid argument or config value is a one-line error naming the option or key, exit status 2,
before Ray starts; and the CLI's --version, --verbose and help text."""
import importlib

import pytest
import ray

from cion_ray.cli import build_parser, main

# the stage functions the CLI calls once its config is built: none may be reached
RUNTIME = {"track": ("cion_ray.runtime.track", "run_track"), "curate": ("cion_ray.runtime.curate", "run_curate"),
           "pretrain": ("cion_ray.runtime.pretrain", "run_pretrain"),
           "evaluate": ("cion_ray.runtime.evaluate", "run_evaluate"),
           "finetune": ("cion_ray.runtime.finetune", "run_finetune"),
           "compare": ("cion_ray.runtime.compare", "run_compare"), "synth": ("cion_ray.synth", "generate_world")}

BASE = {"track": ["--videos", "V", "--out", "OUT", "--mot", "M"],
        "curate": ["--crops", "C", "--out", "OUT"],
        "pretrain": ["--data", "D", "--out", "OUT"],
        "evaluate": ["--weights", "random", "--arch", "resnet18_ibn", "--data", "D", "--out", "OUT/r.json"],
        "finetune": ["--data", "D", "--random-init", "--out", "OUT"],
        "compare": ["--data", "D", "--eval-data", "E", "--out", "OUT"],
        "synth": ["--out", "OUT"]}

# (command, extra arguments, what the one error line must name)
CASES = [
    ("track", ["--actors", "0"], "pool: need actors >= 1"),
    ("track", ["--actors", "-3"], "pool: need actors >= 1"),
    ("track", ["--cpus-per-actor", "0"], "cpus_per_actor"),
    ("track", ["--chunk-frames", "-1"], "chunks.frames"),
    ("track", ["--overlap", "2000"], "chunks.overlap"),
    ("track", ["--frame-step", "0"], "chunks.frame_step"),
    ("track", ["--target-fps", "-5"], "chunks.target_fps"),
    ("track", ["--set", "detector.conf=1.5"], "detector.conf"),
    ("track", ["--set", "detector.batch=0"], "detector.batch"),
    ("track", ["--set", "tracker.track_buffer=0"], "tracker.track_buffer"),
    ("track", ["--set", "tracker.match_thresh=2"], "tracker.match_thresh"),
    ("track", ["--set", "tracker.track_low_thresh=0.5"], "tracker.track_low_thresh"),
    ("track", ["--set", "tracker.gmc_method=magic"], "tracker.gmc_method"),
    ("track", ["--set", "crops.min_score=-0.1"], "crops.min_score"),
    ("track", ["--set", "crops.jpeg_quality=0"], "crops.jpeg_quality"),
    ("track", ["--set", "pool.actors=x"], "pool.actors"),
    ("curate", ["--actors", "0"], "pool: need actors >= 1"),
    ("curate", ["--actors", "-1"], "pool: need actors >= 1"),
    ("curate", ["--window", "1"], "link.window"),
    ("curate", ["--stride", "0"], "link.stride"),
    ("curate", ["--window", "4", "--stride", "4"], "link.stride"),
    ("curate", ["--k", "0"], "link.k"),
    ("curate", ["--min-len", "0"], "denoise.min_len"),
    ("curate", ["--min-images", "0"], "link.min_images"),
    ("curate", ["--market-test-fraction", "1"], "export.market_test_fraction"),
    ("curate", ["--export-writers", "-1"], "export.writers"),
    ("curate", ["--thresholds", "radius=0"], "denoise.radius"),
    ("curate", ["--thresholds", "link=-1"], "link.threshold"),
    ("curate", ["--thresholds", "bogus=1"], "--thresholds"),
    ("curate", ["--embedder", "resnet"], "embed.embedder"),
    ("curate", ["--set", "embed.batch=0"], "embed.batch"),
    ("curate", ["--set", "window=3"], "did you mean link.window?"),
    ("curate", ["--set", "link.windw=3"], "did you mean window?"),
    ("pretrain", ["--epochs", "0"], "optim.epochs"),
    ("pretrain", ["--workers", "0"], "scale.workers"),
    ("pretrain", ["--cpus-per-worker", "0"], "scale.cpus_per_worker"),
    ("pretrain", ["--batch", "0"], "optim.batch_per_worker"),
    ("pretrain", ["--data-fraction", "0"], "data_fraction"),
    ("pretrain", ["--data-fraction", "1.5"], "data_fraction"),
    ("pretrain", ["--seed", "-1"], "seed"),
    ("pretrain", ["--k-schedule", "0:500"], "optim.k_schedule"),
    ("pretrain", ["--k-schedule", "0.5:2"], "optim.k_schedule"),
    ("pretrain", ["--labels", "gt"], "labels=gt"),
    ("pretrain", ["--set", "optim.lr=-0.001"], "optim.lr"),
    ("pretrain", ["--set", "optim.momentum_teacher=1.5"], "optim.momentum_teacher"),
    ("pretrain", ["--set", "model.out_dim=0"], "model.out_dim"),
    ("pretrain", ["--set", "views.global_scale=0,0.5"], "views.global_scale"),
    ("pretrain", ["--set", "views.local_size=4,4"], "views.local_size"),
    ("pretrain", ["--set", "scale.max_failures=-2"], "scale.max_failures"),
    ("pretrain", ["--set", "lr=0.1"], "did you mean optim.lr?"),
    ("evaluate", ["--batch", "0"], "features.batch"),
    ("evaluate", ["--actors", "0"], "features.actors"),
    ("evaluate", ["--ray-above", "-1"], "features.ray_above"),
    ("evaluate", ["--max-rank", "0"], "ranking.max_rank"),
    ("evaluate", ["--size", "0,128"], "features.size"),
    ("evaluate", ["--size", "abc"], "--size"),
    ("evaluate", ["--device", "tpu"], "features.device"),
    ("evaluate", ["--dataset", "imagenet"], "dataset"),
    ("evaluate", ["--seed", "-1"], "seed"),
    ("evaluate", ["--set", "ranking.k1=0"], "ranking.k1"),
    ("evaluate", ["--set", "features.cpus_per_actor=0"], "features.cpus_per_actor"),
    ("evaluate", ["--set", "cuhk03_protocol=both"], "cuhk03_protocol"),
    ("finetune", ["--steps", "-1"], "optim.steps"),
    ("finetune", ["--epochs", "0"], "optim.epochs"),
    ("finetune", ["--lr", "0"], "optim.lr"),
    ("finetune", ["--pk", "1,4"], "identities_per_batch"),
    ("finetune", ["--pk", "16"], "--pk"),
    ("finetune", ["--workers", "0"], "scale.workers"),
    ("finetune", ["--eval-every", "-1"], "eval.every"),
    ("finetune", ["--fractions", "0.5,1.5"], "--fractions"),
    ("finetune", ["--seed", "-2"], "seed"),
    ("finetune", ["--dataset", "imagenet"], "dataset"),
    ("finetune", ["--set", "optim.gamma=0"], "optim.gamma"),
    ("finetune", ["--set", "augment.pad=-2"], "augment.pad"),
    ("finetune", ["--set", "loss.margin=-1"], "loss.margin"),
    ("finetune", ["--set", "data_fraction=0"], "data_fraction"),
    ("compare", ["--parallel", "-1"], "parallel"),
    ("compare", ["--finetune-steps", "-1"], "finetune_steps"),
    ("compare", ["--gpus-per-arm", "-1"], "gpus_per_arm"),
    ("compare", ["--arms", "curated,bogus"], "arms"),
    ("compare", ["--arms", "gt"], "gt arm needs gt"),
    ("compare", ["--seeds", "-1"], "seeds"),
    ("synth", ["--videos", "0"], "videos"),
    ("synth", ["--cameras", "10"], "cameras"),
    ("synth", ["--width", "63"], "frame size"),
    ("synth", ["--workers", "-1"], "--workers"),
    ("synth", ["--set", "det.miss_rate=2"], "det.miss_rate"),
    ("synth", ["--preset", "huge"], "preset"),
]


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if a stage function or ray.init is reached."""
    def reached(*a, **k):
        raise AssertionError("the command went past its argument checks")

    for mod, name in RUNTIME.values():
        monkeypatch.setattr(importlib.import_module(mod), name, reached)
    monkeypatch.setattr(ray, "init", reached)
    was = ray.is_initialized()
    yield
    assert ray.is_initialized() == was


def _argv(tmp_path, cmd, extra):
    paths = {"OUT": str(tmp_path / "out"), "OUT/r.json": str(tmp_path / "out" / "r.json")}
    return [cmd, *[paths.get(a, a) for a in BASE[cmd]], *extra]


@pytest.mark.parametrize("cmd,extra,names", CASES, ids=[f"{c}{''.join(e)}" for c, e, _ in CASES])
def test_invalid_argument_is_one_line_exit_2_before_ray(cmd, extra, names, no_ray, tmp_path, capsys):
    rc = main(_argv(tmp_path, cmd, extra))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith(f"cion-ray {cmd}: error: "), err
    assert names in err, err
    assert not (tmp_path / "out").exists()


def test_yaml_key_in_the_wrong_section_says_where_it_belongs(no_ray, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("window: 4\nlink:\n  stride: 2\n")
    assert main(_argv(tmp_path, "curate", ["--config", str(cfg)])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown key window (did you mean link.window?)" in err and "docs/config.md" in err


def test_a_valid_yaml_section_passes_the_checks(tmp_path, monkeypatch):
    """The same checks let a valid config through to the stage (so the cases above fail for their value)."""
    import cion_ray.runtime.curate as rc

    seen = {}

    def fake(cfg, overwrite=False, address=None):
        seen["cfg"] = cfg
        raise KeyboardInterrupt  # stop here: the config was accepted

    monkeypatch.setattr(rc, "run_curate", fake)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("link:\n  window: 4\n  stride: 2\npool:\n  actors: 2\n")
    assert main(_argv(tmp_path, "curate", ["--config", str(cfg)])) == 130
    assert (seen["cfg"].link.window, seen["cfg"].link.stride, seen["cfg"].pool.actors) == (4, 2, 2)


def test_argparse_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["curate", "--actors", "two", "--crops", "c", "--out", "o"])
    assert e.value.code == 2 and "--actors" in capsys.readouterr().err


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    out = capsys.readouterr().out.strip()
    assert e.value.code == 0 and "\n" not in out
    assert out.startswith(f"cion-ray {version('cion-ray')} (ray {version('ray')}, torch {version('torch')}")


@pytest.mark.parametrize("argv", [["--verbose", "zoo", "list"], ["zoo", "list", "--verbose"],
                                  ["zoo", "--verbose", "list"]])
def test_verbose_before_or_after_the_subcommand(argv, monkeypatch):
    import cion_ray.cli as cli

    monkeypatch.delenv("CION_RAY_VERBOSE", raising=False)
    seen = {}

    def zoo(args):
        seen["env"] = cli.os.environ.get("CION_RAY_VERBOSE")
        return 0

    monkeypatch.setattr(cli, "_zoo", zoo)
    assert build_parser().parse_args(argv).verbose is True
    assert main(argv) == 0 and seen["env"] == "1"
    monkeypatch.delenv("CION_RAY_VERBOSE")
    seen.clear()
    assert main(["zoo", "list"]) == 0 and seen["env"] is None


def test_help_text(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    desc = " ".join(out.split("\n\n")[1].split())
    assert desc.endswith(".") and desc.startswith("cion-ray turns street videos")  # a whole sentence
    assert "docs/config.md" in out
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        if name == "run":  # registered by cion_ray.pipeline.command, which writes its own help
            continue
        assert parser.description and parser.description.endswith("."), name
        assert "--verbose" in parser.format_help(), name
