"""train-offline without training: the VeRL argv (GPU path), Hydra accepting it, guard rails, log parsing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gymverl import train as tr
from gymverl.cli import app

runner = CliRunner()


def _sft_parquet(path: Path, rows: int, *, json_strings: bool = False) -> Path:
    """`rows` SFT rows in gymverl's contract (messages/tools as JSON strings) or as native lists."""
    msgs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(rows)]
    if json_strings:
        table = pa.table({"messages": [json.dumps(m) for m in msgs], "tools": [None] * rows})
    else:
        table = pa.table({"messages": msgs})
    pq.write_table(table, path)
    return path


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    # native list columns: these tests need no dataset class (the JSON-string case is tested below)
    return _sft_parquet(tmp_path / "sft.parquet", 64)


def _opts(data: Path, model_dir: Path, tmp_path: Path, **kw) -> tr.TrainOptions:
    kw.setdefault("out", tmp_path / "run")
    return tr.TrainOptions(train=data, model=str(model_dir), **kw)


def _cfg(argv: list[str]) -> dict[str, str]:
    """The key=value overrides after `-m verl.trainer.sft_trainer`."""
    i = argv.index(tr.TRAINER_MODULE)
    return dict(a.split("=", 1) for a in argv[i + 1 :])


def _launcher(argv: list[str]) -> list[str]:
    return argv[1 : argv.index("-m")]


# ---- argv (GPU path) ----------------------------------------------------------------------------


def test_gpu_single_node_argv(data, model_dir, tmp_path):
    plan = tr.plan_training(_opts(data, model_dir, tmp_path, nproc=8, epochs=3, lr=2e-5, batch_size=32), check_device=False)
    argv = plan.argv
    assert Path(argv[0]).name == "torchrun"
    assert _launcher(argv) == ["--standalone", "--nnodes=1", "--nproc_per_node=8"]
    assert argv[argv.index("-m") + 1] == "verl.trainer.sft_trainer"
    cfg = _cfg(argv)
    assert cfg["data.train_files"] == str(data.resolve())
    assert cfg["model.path"] == str(model_dir.resolve())
    assert cfg["trainer.total_epochs"] == "3"
    assert cfg["optim.lr"] == "2e-05"
    assert cfg["data.train_batch_size"] == "32"
    assert cfg["trainer.n_gpus_per_node"] == "8"
    assert cfg["trainer.default_local_dir"] == str((tmp_path / "run" / "checkpoints").resolve())
    assert cfg["trainer.resume_mode"] == "disable"
    # GPU runs get nothing of the CPU smoke mode.
    assert "trainer.device" not in cfg and "engine.strategy" not in cfg
    assert not set(tr.CPU_ENV) & set(plan.env)
    assert plan.steps_per_epoch == 64 // 32 and plan.total_steps == 2 * 3


def test_multi_node_argv(data, model_dir, tmp_path):
    opts = _opts(data, model_dir, tmp_path, nproc=4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=6000, batch_size=16)
    plan = tr.plan_training(opts, check_device=False)
    assert _launcher(plan.argv) == [
        "--nnodes=2", "--nproc_per_node=4", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=6000",
    ]
    cfg = _cfg(plan.argv)
    assert cfg["trainer.nnodes"] == "2" and cfg["trainer.n_gpus_per_node"] == "4"
    # 64 rows over 8 ranks, 2 rows per rank per step -> 4 steps
    assert plan.steps_per_epoch == 4


def test_multi_node_needs_master_addr(data, model_dir, tmp_path):
    with pytest.raises(tr.TrainError, match="--master-addr"):
        tr.plan_training(_opts(data, model_dir, tmp_path, nnodes=2), check_device=False)


def test_lora_argv(data, model_dir, tmp_path):
    cfg = _cfg(tr.plan_training(_opts(data, model_dir, tmp_path, lora_rank=16), check_device=False).argv)
    assert (cfg["model.lora_rank"], cfg["model.lora_alpha"], cfg["model.target_modules"]) == ("16", "32", "all-linear")
    cfg = _cfg(tr.plan_training(_opts(data, model_dir, tmp_path, lora_rank=8, lora_alpha=8, lora_target_modules="[q_proj,v_proj]"), check_device=False).argv)
    assert (cfg["model.lora_rank"], cfg["model.lora_alpha"], cfg["model.target_modules"]) == ("8", "8", "[q_proj,v_proj]")
    assert "model.lora_rank" not in _cfg(tr.plan_training(_opts(data, model_dir, tmp_path), check_device=False).argv)


def test_overrides_pass_through_and_win(data, model_dir, tmp_path):
    user = ["optim.lr=0.5", "+model.override_config.rope_theta=10000", "trainer.logger=[console]", "~data.custom_cls"]
    argv = tr.plan_training(_opts(data, model_dir, tmp_path, lr=1e-5, overrides=user), check_device=False).argv
    # unchanged, in order, at the end; gymverl's own value for the same key is dropped
    assert argv[-len(user) :] == user
    keys = [tr.override_key(a) for a in argv[argv.index(tr.TRAINER_MODULE) + 1 :]]
    assert keys.count("optim.lr") == 1 and keys.count("trainer.logger") == 1
    assert "optim.lr=1e-05" not in argv


@pytest.mark.parametrize("bad", ["--foo", "optim.lr", "-x=1"])
def test_bad_override_is_refused(data, model_dir, tmp_path, bad):
    with pytest.raises(tr.TrainError, match="key=value"):
        tr.plan_training(_opts(data, model_dir, tmp_path, overrides=[bad]), check_device=False)


def test_cpu_mode_env_and_overrides(data, model_dir, tmp_path):
    plan = tr.plan_training(_opts(data, model_dir, tmp_path, device="cpu"), check_device=False)
    assert plan.env["VERL_USE_EXTERNAL_MODULES"] == "gymverl.verl_cpu"
    assert plan.env["VERL_PLATFORM"] == "cpu" and plan.env["VERL_ENGINE_DEVICE"] == "cuda"
    cfg = _cfg(plan.argv)
    assert cfg["trainer.device"] == "cpu" and cfg["engine.strategy"] == "fsdp2"
    assert cfg["+model.override_config.attn_implementation"] == "sdpa"


def test_json_string_data_uses_gymverl_dataset_class(tmp_path, model_dir):
    strings = _sft_parquet(tmp_path / "s.parquet", 8, json_strings=True)
    lists = _sft_parquet(tmp_path / "l.parquet", 8)
    assert "data.custom_cls.path" not in _cfg(tr.plan_training(tr.TrainOptions(train=lists, model=str(model_dir), out=tmp_path / "a"), check_device=False).argv)
    cfg = _cfg(tr.plan_training(tr.TrainOptions(train=strings, model=str(model_dir), out=tmp_path / "b"), check_device=False).argv)
    assert (cfg["data.custom_cls.path"], cfg["data.custom_cls.name"]) == tr.DATA_CLASS
    assert Path(tr.DATA_CLASS[0]).name == "verl_data.py"


def test_data_class_names_gymverls_verl_dataset():
    """DATA_CLASS (file, name) is what VeRL's custom_cls loader finds: gymverl's MultiTurnSFTDataset subclass."""
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset
    from verl.utils.import_utils import load_extern_object

    import gymverl.verl_data

    cls = load_extern_object(tr.DATA_CLASS[0], tr.DATA_CLASS[1])  # how VeRL's sft_trainer loads it
    assert issubclass(cls, MultiTurnSFTDataset)
    assert Path(tr.DATA_CLASS[0]) == Path(gymverl.verl_data.__file__) and hasattr(gymverl.verl_data, tr.DATA_CLASS[1])



def test_hydra_accepts_the_generated_overrides(data, model_dir, tmp_path):
    """Compose VeRL's own sft_trainer config with our overrides (a wrong key would fail here)."""
    import verl.trainer.sft_trainer as sft
    from hydra import compose, initialize_config_dir

    odd = tmp_path / "my data, v1 (it's)"  # Hydra would read a bare comma as a list
    odd.mkdir()
    data = data.rename(odd / "sft.parquet")
    plan = tr.plan_training(
        _opts(data, model_dir, tmp_path, device="cpu", lora_rank=4, val=data, overrides=["optim.weight_decay=0.1"]),
        check_device=False,
    )
    overrides = plan.argv[plan.argv.index(tr.TRAINER_MODULE) + 1 :]
    with initialize_config_dir(config_dir=str(Path(sft.__file__).parent / "config"), version_base=None):
        cfg = compose(config_name="sft_trainer_engine", overrides=overrides)
    assert cfg.data.train_batch_size == 64
    assert cfg.model.lora_rank == 4 and cfg.optim.weight_decay == 0.1
    assert list(cfg.trainer.logger) == ["console", "file"]
    assert cfg.model.override_config.attn_implementation == "sdpa"
    assert cfg.data.val_files == str(data.resolve())


# ---- guard rails --------------------------------------------------------------------------------


def test_dataset_smaller_than_batch(tmp_path, model_dir):
    small = _sft_parquet(tmp_path / "small.parquet", 10)
    with pytest.raises(tr.TrainError, match="10 training rows, fewer than the batch size 16"):
        tr.plan_training(tr.TrainOptions(train=small, model=str(model_dir), out=tmp_path / "o", batch_size=16), check_device=False)
    # the default batch size shrinks to the data instead (and says so)
    plan = tr.plan_training(tr.TrainOptions(train=small, model=str(model_dir), out=tmp_path / "o", nproc=4), check_device=False)
    assert plan.batch_size == 8 and plan.steps_per_epoch == 1
    assert any("capped" in n for n in plan.notes)


def test_val_smaller_than_batch(tmp_path, data, model_dir):
    small = _sft_parquet(tmp_path / "val.parquet", 3)
    with pytest.raises(tr.TrainError, match="3 validation rows"):
        tr.plan_training(_opts(data, model_dir, tmp_path, val=small, batch_size=8), check_device=False)


def test_default_batch_size_fits_a_small_validation_split(tmp_path, model_dir):
    """Without --batch-size the default shrinks to the validation rows too (VeRL validates in
    batches of the same size): sample-sized train/val splits from to-parquet just work."""
    train = _sft_parquet(tmp_path / "train.parquet", 15)
    val = _sft_parquet(tmp_path / "val.parquet", 4)
    plan = tr.plan_training(tr.TrainOptions(train=train, val=val, model=str(model_dir), out=tmp_path / "o"), check_device=False)
    assert plan.batch_size == 4 and plan.steps_per_epoch == 3
    assert any("capped at the 4 validation rows" in n for n in plan.notes)


def test_a_model_folder_without_tokenizer_files_says_so(tmp_path, model_dir):
    """transformers builds an empty tokenizer from config.json alone: the precheck said "has no
    chat template"; what is missing is the tokenizer files."""
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model_dir / "config.json", bare / "config.json")
    with pytest.raises(tr.TrainError, match=r"has no tokenizer files \(tokenizer.json, tokenizer_config.json\)"):
        tr.load_tokenizer(str(bare))


def test_batch_not_multiple_of_world(data, model_dir, tmp_path):
    with pytest.raises(tr.TrainError, match="multiple of the 4"):
        tr.plan_training(_opts(data, model_dir, tmp_path, nproc=4, batch_size=6), check_device=False)


def test_static_micro_batches_must_divide_each_process_share(data, model_dir, tmp_path):
    """With VeRL's token packing turned off, micro batches of --micro-batch-size rows must divide each
    process's rows per step, or VeRL fails its assertion mid-run: said before anything starts."""
    static = ["data.use_dynamic_bsz=false"]
    with pytest.raises(tr.TrainError, match="micro batches of --micro-batch-size 4, which must divide 6"):
        tr.plan_training(_opts(data, model_dir, tmp_path, batch_size=6, overrides=static), check_device=False)
    tr.plan_training(_opts(data, model_dir, tmp_path, batch_size=6, micro_batch_size=3, overrides=static), check_device=False)
    # token packing (VeRL's default): --micro-batch-size does not shape training micro batches
    tr.plan_training(_opts(data, model_dir, tmp_path, batch_size=6), check_device=False)


@pytest.mark.parametrize(
    "extra, shown",
    [([], "3 global (3 per process, micro batches packed up to 8192 tokens)"),
     (["--", "data.max_token_len_per_gpu=4096"], "packed up to 4096 tokens"),
     (["--micro-batch-size", "1", "--", "data.use_dynamic_bsz=false"], "3 global (3 per process, micro batches of 1 rows)")],
)
def test_plan_says_how_micro_batches_are_made(data, model_dir, tmp_path, extra, shown):
    """The plan printed "batch 3 global, micro 4 per process": VeRL packs micro batches by tokens unless told otherwise."""
    res = runner.invoke(app, ["train-offline", str(data), "-m", str(model_dir), "-o", str(tmp_path / "r"), "--batch-size", "3", "--dry-run", *extra])
    assert res.exit_code == 0, res.output
    assert shown in " ".join(res.output.replace("│", " ").split())


def test_existing_outdir(data, model_dir, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    with pytest.raises(tr.TrainError, match="silently resume.*--resume.*--overwrite"):
        tr.plan_training(_opts(data, model_dir, tmp_path), check_device=False)
    resume = tr.plan_training(_opts(data, model_dir, tmp_path, resume=True), check_device=False)
    assert _cfg(resume.argv)["trainer.resume_mode"] == "auto"
    assert tr.plan_training(_opts(data, model_dir, tmp_path, overwrite=True), check_device=False).notes
    with pytest.raises(tr.TrainError, match="exclude"):
        tr.plan_training(_opts(data, model_dir, tmp_path, resume=True, overwrite=True), check_device=False)


def test_overwrite_refuses_a_foreign_directory(data, model_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(tr.TrainError, match="not a gymverl training directory"):
        tr.plan_training(_opts(data, model_dir, tmp_path, overwrite=True), check_device=False)


def test_resume_needs_a_directory(data, model_dir, tmp_path):
    with pytest.raises(tr.TrainError, match="nothing to resume"):
        tr.plan_training(_opts(data, model_dir, tmp_path, resume=True), check_device=False)


def test_missing_model(data, tmp_path):
    with pytest.raises(tr.TrainError, match="model path does not exist"):
        tr.plan_training(tr.TrainOptions(train=data, model=str(tmp_path / "nope"), out=tmp_path / "o"), check_device=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(tr.TrainError, match="no config.json"):
        tr.plan_training(tr.TrainOptions(train=data, model=str(tmp_path / "empty"), out=tmp_path / "o"), check_device=False)
    # a Hub id is passed through with a note
    plan = tr.plan_training(tr.TrainOptions(train=data, model="Qwen/Qwen2.5-0.5B-Instruct", out=tmp_path / "o"), check_device=False)
    assert _cfg(plan.argv)["model.path"] == "Qwen/Qwen2.5-0.5B-Instruct" and plan.notes


def test_missing_or_bad_data(tmp_path, model_dir):
    with pytest.raises(tr.TrainError, match="no such parquet file"):
        tr.plan_training(tr.TrainOptions(train=tmp_path / "x.parquet", model=str(model_dir), out=tmp_path / "o"), check_device=False)
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(tr.TrainError, match="not a readable parquet"):
        tr.plan_training(tr.TrainOptions(train=bad, model=str(model_dir), out=tmp_path / "o"), check_device=False)
    # rollouts where parquet goes: the error names the option that takes them
    rollouts = tmp_path / "rollouts.jsonl"
    rollouts.write_text('{"responses_create_params": {"input": "x"}, "response": {"output": []}, "reward": 1}\n')
    with pytest.raises(tr.TrainError, match=r"not a parquet file but JSON lines; to train on rollouts, give them with --from-rollouts .*rollouts\.jsonl"):
        tr.plan_training(tr.TrainOptions(train=rollouts, model=str(model_dir), out=tmp_path / "o"), check_device=False)
    nomsg = tmp_path / "rl.parquet"
    pq.write_table(pa.table({"prompt": ["x"] * 4}), nomsg)
    with pytest.raises(tr.TrainError, match="no `messages` column"):
        tr.plan_training(tr.TrainOptions(train=nomsg, model=str(model_dir), out=tmp_path / "o"), check_device=False)


def test_no_gpu_with_device_cuda(data, model_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(tr.TrainError, match="no CUDA GPU"):
        tr.plan_training(_opts(data, model_dir, tmp_path, device="cuda"))


# ---- CLI ----------------------------------------------------------------------------------------


def test_cli_dry_run_json(data, model_dir, tmp_path):
    res = runner.invoke(
        app,
        ["train-offline", str(data), "-m", str(model_dir), "-o", str(tmp_path / "run"), "--nproc", "2",
         "--lora-rank", "8", "--batch-size", "16", "--dry-run", "--json", "--", "optim.weight_decay=0.1", "+a.b=1"],
    )
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert plan["argv"][-2:] == ["optim.weight_decay=0.1", "+a.b=1"]
    assert "--nproc_per_node=2" in plan["argv"]
    assert _cfg(plan["argv"])["model.lora_rank"] == "8"
    assert plan["total_steps"] == 4
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_cli_dry_run_text_shows_command(data, model_dir, tmp_path):
    res = runner.invoke(app, ["train-offline", str(data), "-m", str(model_dir), "-o", str(tmp_path / "r"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "verl.trainer.sft_trainer" in res.output and "torchrun" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "128"], "fewer than the batch size"),
        (["-m", "/nonexistent/model"], "does not exist"),
        (["--device", "tpu"], "cuda or cpu"),
        (["--epochs", "0"], "--epochs must be at least 1"),
    ],
)
def test_cli_usage_errors_exit_2(data, model_dir, tmp_path, args, message):
    base = ["train-offline", str(data), "-m", str(model_dir), "-o", str(tmp_path / "r"), "--dry-run"]
    res = runner.invoke(app, base + args)
    assert res.exit_code == 2
    assert message in " ".join(res.stderr.split())
    assert "Traceback" not in res.output


def test_cli_requires_model_and_out(data, tmp_path):
    res = runner.invoke(app, ["train-offline", str(data), "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--model" in res.stderr
    res = runner.invoke(app, ["train-offline", str(data), "-m", "x/y"])
    assert res.exit_code == 2 and "--out" in res.stderr


def test_cli_existing_outdir(data, model_dir, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "train.log").write_text("x")
    res = runner.invoke(app, ["train-offline", str(data), "-m", str(model_dir), "-o", str(tmp_path / "r"), "--dry-run"])
    assert res.exit_code == 2 and "--resume" in res.stderr


# ---- log parsing --------------------------------------------------------------------------------


def test_parse_step_line():
    line = (
        "Epoch 1/3:   0%|          | 0/2 [00:00<?, ?it/s]step:3 - perf/max_memory_allocated_gb:1.5 - "
        "train/loss:5.78125 - train/lr:0.001 - train/global_tokens:108 - train/total_tokens(B):3.24e-07"
    )
    step, metrics = tr.parse_step_line(line)
    assert step == 3
    assert metrics["train/loss"] == 5.78125 and metrics["train/global_tokens"] == 108
    assert metrics["train/total_tokens(B)"] == pytest.approx(3.24e-07)
    assert tr.parse_step_line("Total steps: 6, num_warmup_steps: 0") is None
    assert tr.parse_step_line("global_step:3 - x:1") is None


def test_steps_per_epoch_matches_verl_sampler():
    """Same count as VeRL's DistributedSampler(drop_last) + DataLoader(drop_last)."""
    from torch.utils.data import DataLoader, DistributedSampler

    for rows, batch, world in [(64, 16, 1), (10, 8, 4), (103, 12, 3), (7, 4, 2)]:
        sampler = DistributedSampler(range(rows), num_replicas=world, rank=0, drop_last=True, shuffle=False)
        loader = DataLoader(range(rows), batch_size=batch // world, sampler=sampler, drop_last=True)
        assert tr.steps_per_epoch(rows, batch, world) == len(loader), (rows, batch, world)


def test_plan_names_the_rows_each_epoch_leaves_out(data, model_dir, tmp_path):
    """64 rows in batches of 24: 2 steps, and 16 rows VeRL's drop_last leaves out (said, not silent)."""
    plan = tr.plan_training(_opts(data, model_dir, tmp_path, batch_size=24), check_device=False)
    assert plan.steps_per_epoch == 2
    assert "16 of the 64 training rows are left out of each epoch (VeRL drops the last incomplete batch of 24)" in plan.notes
    assert not [n for n in tr.plan_training(_opts(data, model_dir, tmp_path, batch_size=16), check_device=False).notes if "left out" in n]


def test_latest_checkpoint(tmp_path):
    assert tr.latest_checkpoint(tmp_path) is None
    for n in (2, 10, 4):
        (tmp_path / f"global_step_{n}").mkdir()
    assert tr.latest_checkpoint(tmp_path).name == "global_step_10"
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("4")
    assert tr.latest_checkpoint(tmp_path).name == "global_step_4"


# ---- --from-rollouts (selection + conversion by gymverl.convert; no training here) --------------


def test_cli_from_rollouts_dry_run(model_dir, tmp_path):
    from conftest import SAMPLE_DATA

    out = tmp_path / "run"
    res = runner.invoke(
        app,
        ["train-offline", "--from-rollouts", str(SAMPLE_DATA / "rollouts.jsonl"), "-m", str(model_dir), "-o", str(out),
         "--batch-size", "2", "--dry-run", "--json", "--", "optim.weight_decay=0.0"],
    )
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    cfg = _cfg(plan["argv"])
    # the real run's paths, gymverl's dataset class for the JSON-string columns, the pass-through override
    assert cfg["data.train_files"] == str((out / "data" / "train.parquet").resolve())
    assert cfg["data.custom_cls.name"] == "GymverlSFTDataset"
    assert plan["argv"][-1] == "optim.weight_decay=0.0"
    rewards = [json.loads(line)["reward"] for line in (SAMPLE_DATA / "rollouts.jsonl").read_text().splitlines()]
    assert 0 < plan["train_rows"] <= sum(r >= 1.0 for r in rewards)
    assert not out.exists()
    assert any(n.startswith(f"the command reads {(out / 'data').resolve()}, which a real run writes first") for n in plan["notes"])


def test_cli_from_rollouts_says_when_the_val_fraction_holds_no_task(model_dir, tmp_path):
    """5 tasks and --val-fraction 0.1: no task falls in the split; that was only "11 train + 0 val rows"."""
    from conftest import SAMPLE_DATA

    res = runner.invoke(
        app,
        ["train-offline", "--from-rollouts", str(SAMPLE_DATA / "rollouts.jsonl"), "-m", str(model_dir), "-o", str(tmp_path / "r"),
         "--val-fraction", "0.1", "--dry-run", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    notes = json.loads(res.stdout)["notes"]
    assert "--val-fraction 0.1 put no task in the validation split, so this run validates nothing; raise it or give --val" in notes


def test_cli_from_rollouts_rejected_lines_exit_1(model_dir, tmp_path):
    from conftest import SAMPLE_DATA

    src = tmp_path / "rollouts.jsonl"
    src.write_text((SAMPLE_DATA / "rollouts.jsonl").read_text() + "{not json\n")
    res = runner.invoke(
        app,
        ["train-offline", "--from-rollouts", str(src), "-m", str(model_dir), "-o", str(tmp_path / "r"), "--batch-size", "2", "--dry-run"],
    )
    assert res.exit_code == 1, res.output
    assert "1 of 21 rollout lines rejected" in " ".join(res.stderr.split())


def test_cli_from_rollouts_nothing_selected(model_dir, tmp_path):
    from conftest import SAMPLE_DATA

    res = runner.invoke(
        app,
        ["train-offline", "--from-rollouts", str(SAMPLE_DATA / "rollouts.jsonl"), "--min-reward", "2", "-m", str(model_dir),
         "-o", str(tmp_path / "r"), "--dry-run"],
    )
    assert res.exit_code == 2 and "nothing to train on" in " ".join(res.stderr.split())


def test_cli_data_and_from_rollouts_conflict(data, model_dir, tmp_path):
    from conftest import SAMPLE_DATA

    res = runner.invoke(
        app,
        ["train-offline", str(data), "--from-rollouts", str(SAMPLE_DATA / "rollouts.jsonl"), "-m", str(model_dir), "-o", str(tmp_path / "r")],
    )
    assert res.exit_code == 2 and "not both" in res.stderr


def test_run_training_streams_events(tmp_path, data, model_dir):
    """run_training on a stand-in trainer: step/val/total events, tqdm \\r redraws, log kept, losses."""
    import sys

    fake = tmp_path / "fake_trainer.py"
    fake.write_text(
        "import sys, time\n"
        "print('Total steps: 3, num_warmup_steps: 0', flush=True)\n"
        "for i, loss in enumerate([2.5, 2.0, 1.5], 1):\n"
        "    sys.stderr.write(f'Epoch 1/1: {i}/3\\r'); sys.stderr.flush()\n"
        "    print(f'step:{i} - train/loss:{loss} - train/global_tokens:100 - perf/max_memory_allocated_gb:{i}.5', flush=True)\n"
        "print('step:3 - val/loss:1.25', flush=True)\n"
    )
    plan = tr.plan_training(_opts(data, model_dir, tmp_path), check_device=False)
    plan.argv = [sys.executable, str(fake)]
    events = []
    result = tr.run_training(plan, events.append)
    assert result.returncode == 0
    assert [e.step for e in events if e.kind == "step"] == [1, 2, 3]
    assert [e.total for e in events if e.kind == "total"] == [3]
    assert result.losses == [2.5, 2.0, 1.5] and result.val_loss == 1.25
    assert result.tokens == 300 and result.peak_memory_gb == 3.5 and result.steps == 3
    assert "Epoch 1/1: 2/3" in (plan.out / "train.log").read_text()
    assert json.loads((plan.out / "gymverl-train.json").read_text())["result"]["val_loss"] == 1.25


def test_run_training_failure_keeps_tail(tmp_path, data, model_dir):
    import sys

    plan = tr.plan_training(_opts(data, model_dir, tmp_path), check_device=False)
    plan.argv = [sys.executable, "-c", "import sys; print('boom: the real reason'); sys.exit(3)"]
    result = tr.run_training(plan)
    assert result.returncode == 3 and result.tail[-1] == "boom: the real reason"
    assert result.checkpoint is None


# ---- checks before VeRL starts (train-long-rows-error-hidden, train-offline-unclear-precheck-errors) --


def _dry(data: Path, model: Path, tmp_path: Path, *args: str):
    res = runner.invoke(app, ["train-offline", str(data), "-m", str(model), "-o", str(tmp_path / "r"), "--dry-run", *args])
    return res, " ".join(res.stderr.split())


def _long_rows_parquet(path: Path, lengths: list[int]) -> Path:
    """SFT rows in gymverl's contract whose answers are `n` space-separated words each, with source lines."""
    msgs = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": " ".join(["word"] * n)}] for n in lengths]
    table = pa.table({
        "messages": [json.dumps(m) for m in msgs], "tools": [None] * len(msgs),
        "extra_info": [{"line": 10 + i} for i in range(len(msgs))],
    })  # fmt: skip
    pq.write_table(table, path)
    return path


def test_rows_longer_than_max_length_are_named_before_verl_starts(tmp_path, model_dir):
    data = _long_rows_parquet(tmp_path / "long.parquet", [10, 3000, 20, 1500])
    res, err = _dry(data, model_dir, tmp_path, "--batch-size", "2")
    assert res.exit_code == 2, res.output
    assert "2 of 4 rows are longer than --max-length 1024 tokens" in err and "row 2 from input line 11" in err, err
    assert "raise --max-length" in err and "to-parquet --max-tokens" in err and "Traceback" not in res.output
    assert "sequence length is longer" not in err  # transformers' own warning is not repeated
    ok, _ = _dry(data, model_dir, tmp_path, "--batch-size", "2", "--max-length", "20000", "--json")
    assert ok.exit_code == 0, ok.output
    # a user who asks VeRL to truncate gets no length check
    cut, _ = _dry(data, model_dir, tmp_path, "--batch-size", "2", "--", "data.truncation=right")
    assert cut.exit_code == 0, cut.output


def test_max_length_raises_verls_token_budget(data, model_dir, tmp_path):
    """--max-length above VeRL's 8192-token dynamic batch budget raises data.max_token_len_per_gpu with it."""
    assert _cfg(tr.plan_training(_opts(data, model_dir, tmp_path), check_device=False).argv)["data.max_token_len_per_gpu"] == "8192"
    plan = tr.plan_training(_opts(data, model_dir, tmp_path, max_length=16384), check_device=False)
    assert _cfg(plan.argv)["data.max_token_len_per_gpu"] == "16384"
    plan = tr.plan_training(_opts(data, model_dir, tmp_path, overrides=["data.max_token_len_per_gpu=20000"], max_length=16384), check_device=False)
    assert _cfg(plan.argv)["data.max_token_len_per_gpu"] == "20000"  # the user's override wins


def test_empty_data_and_zero_batch_size_are_clear(tmp_path, model_dir, data):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"messages": pa.array([], pa.string()), "tools": pa.array([], pa.string())}), empty)
    res, err = _dry(empty, model_dir, tmp_path)
    assert res.exit_code == 2 and err == f"error: {empty} has no rows.", err
    res, err = _dry(data, model_dir, tmp_path, "--batch-size", "0")
    assert res.exit_code == 2 and err == "error: --batch-size must be at least 1, not 0.", err
    res, err = _dry(data, model_dir, tmp_path, "--val", str(empty))
    assert res.exit_code == 2 and err == f"error: {empty} has no rows.", err


def _without_chat_template(model_dir: Path, bare: Path) -> Path:
    """A copy of `model_dir` whose tokenizer has no chat template."""
    shutil.copytree(model_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    return bare


def test_model_without_chat_template_fails_the_dry_run(tmp_path, data, model_dir):
    bare = _without_chat_template(model_dir, tmp_path / "notemplate")
    res, err = _dry(data, bare, tmp_path)
    assert res.exit_code == 2 and err == f"error: the tokenizer in {bare} has no chat template; SFT needs one.", err
    # no tokenizer at all: one sentence too, before torchrun
    empty = tmp_path / "weights-only"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    res, err = _dry(data, empty, tmp_path)
    assert res.exit_code == 2 and err.startswith(f"error: {empty} has no tokenizer files") and "Traceback" not in res.output, err


def test_shared_workplace_assistant_rows_are_refused_with_their_length(tmp_path, tiny_model):
    """The real case: NeMo Gym's workplace_assistant rollouts are several thousand tokens long."""
    from conftest import SHARED

    src = SHARED / "cases" / "train-long-rows-error-hidden" / "workplace_assistant.jsonl"
    if not src.exists():
        pytest.skip(f"shared case not found: {src}")
    res = runner.invoke(app, ["train-offline", "--from-rollouts", str(src), "-m", str(tiny_model), "-o", str(tmp_path / "r"),
                              "--device", "cpu", "--dry-run"])
    err = " ".join(res.stderr.split())
    assert res.exit_code == 2, res.output
    assert "4 of 4 rows are longer than --max-length 1024 tokens" in err and "from input line" in err, err


def test_run_training_failure_names_the_workers_error(tmp_path, data, model_dir):
    """The cause is VeRL's error line from the log, found above torchrun's summary box."""
    import sys

    plan = tr.plan_training(_opts(data, model_dir, tmp_path), check_device=False)
    box = "\n".join([
        "[rank0]: Traceback (most recent call last):",
        "[rank0]: ValueError: sequence_length=10438 is larger than self.max_length=1024",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "=" * 60, "verl.trainer.sft_trainer FAILED", "Failures:", "  <NO_OTHER_FAILURES>", "=" * 60,
    ])  # fmt: skip
    plan.argv = [sys.executable, "-c", f"import sys; print({box!r}); sys.exit(1)"]
    result = tr.run_training(plan)
    assert result.returncode == 1
    assert result.cause == "ValueError: sequence_length=10438 is larger than self.max_length=1024"


def test_shared_precheck_case_model_without_template(tmp_path, model_dir):
    """train-offline-unclear-precheck-errors: the shared rollouts with a model whose tokenizer has no
    chat template fail `--dry-run` with one sentence (it used to pass, and VeRL failed later)."""
    from conftest import SHARED

    src = SHARED / "cases" / "train-offline-unclear-precheck-errors" / "rollouts.jsonl"
    if not src.exists():
        pytest.skip(f"shared case not found: {src}")
    bare = _without_chat_template(model_dir, tmp_path / "notemplate")
    res = runner.invoke(app, ["train-offline", "--from-rollouts", str(src), "-m", str(bare), "-o", str(tmp_path / "r"),
                              "--device", "cpu", "--dry-run"])
    err = " ".join(res.stderr.split())
    assert res.exit_code == 2 and err == f"error: the tokenizer in {bare} has no chat template; SFT needs one.", res.output


def test_awkward_values_reach_verl_as_given(data, model_dir, tmp_path):
    """Every gymverl-built override reads back through Hydra's own parser as the value meant (a comma
    in a path used to split it into a sweep; `~` was a token error)."""
    parser = pytest.importorskip("hydra.core.override_parser.overrides_parser").OverridesParser.create()
    out = tmp_path / "run, it's ~here"
    opts = _opts(data, model_dir, tmp_path, out=out, project="p,q", experiment="exp=1 'x'", lora_rank=4,
                 lora_target_modules="q_proj,v_proj")
    argv = tr.plan_training(opts, check_device=False, check_out=False).argv
    values = {}
    for text in argv[argv.index(tr.TRAINER_MODULE) + 1 :]:
        o = parser.parse_override(text)
        assert not o.is_sweep_override(), text
        values[o.key_or_group] = o.value()
    assert values["trainer.default_local_dir"] == str(out.resolve() / tr.CHECKPOINTS)
    assert values["trainer.project_name"] == "p,q" and values["trainer.experiment_name"] == "exp=1 'x'"
    assert values["model.target_modules"] == ["q_proj", "v_proj"]
    assert values["data.val_files"] is None and values["trainer.logger"] == ["console", "file"]
