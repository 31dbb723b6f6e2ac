"""The demo's steps, in order: `Demo` runs each one, times it and turns a missing part or an error into its status."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from gymverl import proc
from gymverl.demo.options import STEPS, DemoOptions, check_data
from gymverl.demo.parts import _rescore, _rescore_api, _score_rl_rows, _to_parquet
from gymverl.demo.report import FAILED, OK, SKIPPED, UNAVAILABLE, DemoReport, Reporter, StepResult, Unavailable, _shell, display_path
from gymverl.demo.servers import _BackgroundServers, agents_in, server_for_agent
from gymverl.jsonl import jsonable


class Demo:
    """One demo run: the steps as methods, sharing paths and results."""

    def __init__(self, opts: DemoOptions, reporter: Reporter, out: Path) -> None:
        self.opts = opts
        self.r = reporter
        self.out = out
        self.tasks, self.rollouts = check_data(opts.data)
        self.report = DemoReport(out)
        self.bg: _BackgroundServers | None = None
        self.current = self.rollouts  # the rollouts later steps read (rescored ones once available)
        self.sft_train: Path | None = None
        self.sft_val: Path | None = None
        self.model_dir: Path | None = None
        self.rl_files: list[Path] = []
        self.urls: dict[str, str] = {}
        self.routes: dict[str, str] = {}  # agent name -> resources server name
        self.index = 0

    # ---- running steps -------------------------------------------------------------------------

    def skipped(self, name: str) -> bool:
        """True when the user skipped this step (rescore implies servers; train implies model)."""
        s = self.opts.skip
        return name in s or (name == "servers" and "rescore" in s) or (name == "model" and "train" in s)

    def run_step(self, name: str, title: str, fn: Callable[[StepResult], None]) -> StepResult:
        """Run one step, timing it and turning a missing part or an error into its status."""
        self.index += 1
        result = StepResult(name, title)
        self.r.start(self.index, len(STEPS), name, title)
        t0 = time.monotonic()
        if self.skipped(name):
            result.status, result.summary = SKIPPED, "skipped (--skip)"
        else:
            try:
                fn(result)
            except Unavailable as exc:
                result.status, result.summary = UNAVAILABLE, str(exc)
            except KeyboardInterrupt:
                result.status, result.summary = FAILED, "interrupted"
                result.seconds = time.monotonic() - t0
                self.report.steps.append(result)
                raise
            except Exception as exc:  # a failed step is reported; later steps that need it are skipped
                result.status = FAILED
                result.summary = f"{type(exc).__name__}: {exc}".splitlines()[0][:400]
                result.details.setdefault("error", str(exc)[-4000:])
        result.seconds = time.monotonic() - t0
        self.report.steps.append(result)
        self.r.done(result)
        return result

    def blocked(self, result: StepResult, needs: str) -> bool:
        """Mark `result` skipped when the step it needs did not succeed; True if so."""
        dep = self.report.step(needs)
        if dep is None or dep.status == OK:
            return False
        result.status = SKIPPED
        result.summary = f"skipped: needs the {needs} step, which is {dep.status}"
        return True

    def run(self) -> DemoReport:
        """Run every step in order; servers are stopped before this returns or raises."""
        t0 = time.monotonic()
        try:
            self.run_step("servers", "Start NeMo Gym resources servers on 127.0.0.1", self.step_servers)
            self.run_step("model", "Build a tiny local model + tokenizer (for the training step)", self.step_model)
            self.run_step("validate", f"Validate {display_path(self.rollouts)}", self.step_validate)
            self.run_step("rescore", "Rescore the rollouts against NeMo Gym /verify", self.step_rescore)
            self.run_step("stats", "Reward statistics", self.step_stats)
            self.run_step("parquet", "Convert to VeRL parquet (rl and sft)", self.step_parquet)
            self.run_step("preview", "Preview what training sees (rl tools, sft trained tokens)", self.step_preview)
            self.run_step("reward", "Score rl prompts with the VeRL reward function (NeMo Gym /verify)", self.step_reward)
            self.stop_servers()  # training needs the cores more than idle servers do
            self.run_step("train", "Train offline on CPU: VeRL SFT trainer, tiny model", self.step_train)
        except KeyboardInterrupt:
            self.report.interrupted = True
            raise
        finally:
            self.stop_servers()
            self.report.seconds = time.monotonic() - t0
            with contextlib.suppress(OSError):
                (self.out / "demo.json").write_text(json.dumps(self.report.to_dict(), indent=2) + "\n")
        return self.report

    def stop_servers(self) -> None:
        """Stop the NeMo Gym servers (and Ray) if this demo started them."""
        if self.bg is not None:
            bg, self.bg = self.bg, None
            self.r.info("stopping the NeMo Gym servers (ng_run, Ray) ...")
            with proc.shielded():
                bg.stop()
            self.r.info("NeMo Gym servers stopped")

    def cmd(self, *args: Any) -> None:
        """Tell the user the gymverl command that does what this step does (it works pasted after the demo)."""
        self.r.info(f"same as: {_shell(*args)}")

    def tasks_args(self) -> list[Any]:
        """`--tasks TASKS` when the data has a tasks file (the steps use it only then), else nothing."""
        return ["--tasks", self.tasks] if self.tasks.is_file() else []

    # ---- steps ---------------------------------------------------------------------------------

    def step_servers(self, res: StepResult) -> None:
        """Start the resources servers the sample rollouts need, in the background."""
        from gymverl.nemo_gym import start_resources_servers

        _rescore_api()  # the servers are only for rescoring: no rescore, no servers

        agents = agents_in(self.rollouts)
        if not agents:
            raise RuntimeError(f"{self.rollouts}: no rollout names its agent (agent_ref), so there is no server to start")
        self.routes = {agent: server_for_agent(agent) for agent in agents}
        names = sorted(set(self.routes.values()))
        log = self.out / "logs" / "ng_run.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        servers = start_resources_servers(
            names, env=self.opts.nemo_gym_env, log_path=log, startup_timeout=self.opts.server_timeout
        )
        self.bg = _BackgroundServers(servers).start()
        res.summary = f"starting {', '.join(names)} via ng_run in the background (ready before rescoring)"
        res.outputs = [log]
        res.details = {"servers": names, "nemo_gym_env": str(servers.env), "log": log}

    def step_model(self, res: StepResult) -> None:
        """Build the tiny model used by the training step."""
        from gymverl.tiny import build_tiny_model

        out = self.out / "tiny-model"
        texts = self.rollouts.read_text(encoding="utf-8").splitlines()
        build_tiny_model(out, texts)
        self.model_dir = out
        import json as _json

        cfg = _json.loads((out / "config.json").read_text())
        res.summary = (
            f"random Qwen2 ({cfg.get('num_hidden_layers')} layers, hidden {cfg.get('hidden_size')}, "
            f"vocab {cfg.get('vocab_size')}) with a chat template"
        )
        res.outputs = [out]

    def step_validate(self, res: StepResult) -> None:
        """Validate the sample rollouts (a line-numbered report; rejects written to a file)."""
        from gymverl.records import validate_file

        rejects = self.out / "validate-rejects.jsonl"
        self.cmd("gymverl", "validate", self.rollouts, "--rejects", rejects)
        summary = validate_file(self.rollouts, rejects=rejects)
        data = summary.to_dict()
        (self.out / "validate.json").write_text(json.dumps(data, indent=2) + "\n")
        res.details = {"lines": summary.lines, "valid": summary.valid, "rejected": summary.rejected}
        res.summary = (
            f"{summary.lines} lines: {summary.valid} valid rollouts, {summary.rejected} rejected; "
            f"{data['tasks']} tasks, {summary.incomplete} truncated response{'' if summary.incomplete == 1 else 's'}"
        )
        res.outputs = [self.out / "validate.json"] + ([rejects] if summary.rejected else [])
        if summary.rejected:
            raise RuntimeError(f"{summary.rejected} sample rollouts are invalid (see {rejects})")

    def step_rescore(self, res: StepResult) -> None:
        """Rescore every rollout against its environment's /verify (routed by agent)."""
        _rescore_api()
        if self.blocked(res, "servers"):
            return
        assert self.bg is not None
        bg = self.bg
        servers = bg.wait(lambda: self.r.info("waiting for the NeMo Gym servers to be ready ..."))
        urls = {agent: servers.url(name) for agent, name in self.routes.items()}
        self.urls = urls
        names = sorted(set(self.routes.values()))
        ready = ", ".join(f"{n} {servers.url(n)}" for n in names)
        self.r.info(f"servers ready after {bg.ready_seconds or 0:.0f} s: {ready}")
        started = self.report.step("servers")
        if started is not None:
            started.summary = f"{ready} (ready after {bg.ready_seconds or 0:.0f} s; stopped before training)"
            started.details["urls"] = {n: servers.url(n) for n in names}
            started.details["ready_seconds"] = bg.ready_seconds
        out = self.out / "rescored.jsonl"
        failures = self.out / "rescore-failures.jsonl"
        # --failures: this step's file, not the CLI's default; --overwrite: pasted after the demo, OUT holds this run.
        args = ["gymverl", "rescore", self.rollouts, "-o", out, "--failures", failures, *self.tasks_args(), "--force", "--overwrite"]
        for agent, url in urls.items():
            args += ["--server", f"{agent}={url}"]
        self.cmd(*args)
        summary = _rescore(self.rollouts, out, failures, urls, self.tasks)
        res.details = {k: summary.get(k) for k in ("lines", "rescored", "failed", "rejected", "changed", "mean_before", "mean_after", "per_task", "warning", "seconds")}
        res.outputs = [out] + ([failures] if summary.get("failed") or summary.get("rejected") else [])
        mb, ma = summary.get("mean_before"), summary.get("mean_after")
        means = f", mean reward {mb:.3f} -> {ma:.3f}" if mb is not None and ma is not None else ""
        res.summary = (
            f"{summary['rescored']} of {summary['lines']} rollouts verified by NeMo Gym: "
            f"{summary['changed']} rewards changed{means}; {summary['failed']} failed, {summary['rejected']} rejected"
        )
        if summary.get("warning"):
            self.r.info(f"warning: {summary['warning']}")
        if summary.get("failed") or summary.get("rejected") or not summary.get("complete", True):
            raise RuntimeError(
                f"{summary['failed']} rollouts could not be verified and {summary['rejected']} were rejected (see {failures})"
            )
        self.current = out

    def step_stats(self, res: StepResult) -> None:
        """Statistics of the (rescored) rollouts, compared with the originals when rescored."""
        from gymverl.stats import compare_stats, compute_stats, plot_stats

        stats = compute_stats(self.current)
        before = compute_stats(self.rollouts) if self.current != self.rollouts else None
        png = self.out / "stats.png"
        self.cmd("gymverl", "stats", self.current, *(["--against", self.rollouts] if before else []), "--plot", png)
        data = stats.to_dict()
        payload: dict[str, Any] = {"stats": data}
        if before is not None:
            payload["comparison"] = compare_stats(before, stats)
        (self.out / "stats.json").write_text(json.dumps(jsonable(payload), indent=2) + "\n")
        res.outputs = [self.out / "stats.json"]
        try:
            plot_stats(stats, png, against=before)
            res.outputs.append(png)
        except ImportError:
            self.r.info("matplotlib is not installed: no stats.png (pip install 'gymverl[plot]')")
        self.r.show_stats(data)
        o = data["overall"]
        p = {r["k"]: r["pass_at_k"] for r in o["pass_at_k"]}
        res.details = {"pass_rate": o["pass_rate"], "pass_at_k": p, "mean_reward": o["reward"]["mean"]}
        res.summary = (
            f"{o['tasks']} tasks: pass@1 {p.get(1, 0):.3f}, pass@{max(p)} {p[max(p)]:.3f}; "
            f"{o['tasks_all_solved']} all solved, {o['tasks_all_failed']} all failed"
        ) if p else "no rollouts"

    def step_parquet(self, res: StepResult) -> None:
        """Convert to VeRL parquet: rl (one prompt per task) and sft (correct rollouts only)."""
        out = self.out / "parquet"
        vf = f"{self.opts.val_fraction:g}"
        self.cmd("gymverl", "to-parquet", self.current, *self.tasks_args(), "--val-fraction", vf, "--format", "rl", "-o", out / "rl")
        self.cmd("gymverl", "to-parquet", self.current, "--val-fraction", vf, "--format", "sft", "--min-reward", "1.0", "-o", out / "sft")
        done = _to_parquet(self.current, self.tasks, out, self.opts.val_fraction)
        res.details = done
        res.outputs = [Path(p) for fmt in done.values() for p in fmt.get("files", [])]
        for fmt, d in done.items():
            dropped = ", ".join(f"{n} {rule}" for rule, n in d["filtered"].items())
            self.r.info(f"{fmt}: {d['train_rows']} train + {d['val_rows']} val rows" + (f" (dropped: {dropped})" if dropped else ""))
            for w in d["warnings"]:
                self.r.info(f"{fmt}: warning: {w}")
        res.summary = "; ".join(f"{fmt}: {d['train_rows']} train + {d['val_rows']} val rows" for fmt, d in done.items())
        self.rl_files = [Path(p) for p in done.get("rl", {}).get("files", [])]
        sft = done.get("sft", {})
        self.sft_train = Path(sft["train"]) if sft.get("train") else None
        self.sft_val = Path(sft["val"]) if sft.get("val") else None

    def step_preview(self, res: StepResult) -> None:
        """Render one rl row with tools and one sft row with the tiny model's chat template (gymverl.preview).

        Fails when a row's tools are missing from the rendered prompt: that is the fault the
        `gymverl_tools` agent loop exists to prevent, and the demo should show it does not happen.
        """
        if self.blocked(res, "parquet") or self.blocked(res, "model"):
            return
        try:
            import pyarrow.parquet as pq

            from gymverl.preview import preview
        except ImportError as exc:
            raise Unavailable(f"gymverl.preview is not available in this install ({exc})") from None
        assert self.model_dir is not None
        shown: list[str] = []
        for path in self.rl_files:
            n = pq.ParquetFile(path).metadata.num_rows
            for i in range(n):
                pv = preview(path, self.model_dir, row=i)
                if not pv.tools:
                    continue
                names = [t["function"]["name"] for t in pv.tools]
                missing = [nm for nm in names if nm not in pv.sections[0].text]
                if missing:
                    raise RuntimeError(f"row {i} of {display_path(path)}: tools {', '.join(missing)} are not in the rendered prompt")
                self.cmd("gymverl", "preview", path, "--tokenizer", self.model_dir, "--row", str(i))
                self.r.info(f"rl row {i} ({pv.data.get('data_source')}): agent loop {pv.agent_loop}, "
                            f"tools in the policy's prompt: {', '.join(names)} ({len(pv.sections[0].token_ids)} prompt tokens)")
                shown.append(f"rl row {i}: tools {', '.join(names)} shown")
                break
            if shown:
                break
        if self.sft_train is not None:
            pv = preview(self.sft_train, self.model_dir, row=0)
            sec = pv.sections[0]
            trained = sum(sp.end - sp.start for sp in sec.trained)
            self.r.info(f"sft row 0: {trained} of {len(sec.token_ids)} tokens trained (the assistant turns)")
            shown.append(f"sft row 0: {trained}/{len(sec.token_ids)} tokens trained")
        res.summary = "; ".join(shown) if shown else "no rl row with tools and no sft row to preview"

    def step_reward(self, res: StepResult) -> None:
        """Score each rl row twice with gymverl.reward.compute_score: its reference answer, and a non-answer."""
        try:
            from gymverl.reward import compute_score  # noqa: F401
        except ImportError as exc:
            raise Unavailable(f"gymverl.reward is not available in this install ({exc})") from None
        if self.blocked(res, "parquet") or self.blocked(res, "rescore"):
            return
        import gymverl.reward

        env = " ".join(f"{agent}={url}" for agent, url in self.urls.items())
        self.r.info(
            # Absolute paths: the hint is meant to be pasted into a shell anywhere, not only here.
            f"in VeRL, with your model and trainer overrides: GYMVERL_VERIFY_URL={_shell(env)} python -m verl.trainer.main_ppo "
            f"data.train_files={_shell(str(self.rl_files[0].resolve()) if self.rl_files else 'RL.parquet')} "
            f"reward.custom_reward_function.path={_shell(str(Path(gymverl.reward.__file__).resolve()))} "
            "reward.custom_reward_function.name=compute_score "
            # rows with tools name gymverl's agent loop (agent_name=gymverl_tools); VeRL's workers load it from here
            "actor_rollout_ref.rollout.agent.agent_loop_config_path="
            f"{_shell(str(Path(gymverl.reward.__file__).resolve().with_name('agent_loop.yaml')))}"
        )
        rows = _score_rl_rows(self.rl_files, self.urls)
        res.details = {"rows": rows}
        right = sum(1 for r in rows if r["reference_score"] == 1.0)
        wrong = sum(1 for r in rows if r["non_answer_score"] == 0.0)
        for r in rows:
            self.r.info(
                f"{r['data_source']} #{r['index']} ({r['split']}): reference answer -> {r['reference_score']:g}, "
                f"non-answer -> {r['non_answer_score']:g}"
            )
        res.summary = (
            f"{len(rows)} rl prompts scored via /verify: reference answer 1.0 on {right}/{len(rows)}, "
            f"non-answer 0.0 on {wrong}/{len(rows)}"
        )
        if right != len(rows) or wrong != len(rows):
            raise RuntimeError(res.summary)

    def step_train(self, res: StepResult) -> None:
        """A short CPU run of VeRL's SFT trainer on the sft parquet, with the tiny model."""
        if self.blocked(res, "parquet") or self.blocked(res, "model"):
            return
        try:
            from gymverl.train import TrainOptions, train_offline
        except ImportError as exc:
            raise Unavailable(f"gymverl.train is not available in this install ({exc})") from None
        assert self.model_dir is not None and self.sft_train is not None
        out = self.out / "train"
        parquet = self.report.step("parquet")
        val_rows = parquet.details.get("sft", {}).get("val_rows", 0) if parquet else 0
        # VeRL validates in batches of the training batch size: only use the val split when it fills one.
        val = self.sft_val if self.sft_val is not None and val_rows >= self.opts.train_batch_size else None
        opts = TrainOptions(
            train=self.sft_train,
            val=val,
            model=str(self.model_dir),
            out=out,
            epochs=self.opts.train_epochs,
            batch_size=self.opts.train_batch_size,
            micro_batch_size=self.opts.train_batch_size,
            max_length=self.opts.train_max_length,
            device="cpu",
            lr=1e-4,
        )
        self.cmd(
            "gymverl", "train-offline", opts.train, *(["--val", opts.val] if opts.val else []), "-m", Path(opts.model), "-o", out,
            "--device", "cpu", "--epochs", opts.epochs, "--batch-size", opts.batch_size,
            "--micro-batch-size", opts.micro_batch_size, "--max-length", opts.max_length, "--lr", opts.lr,
            "--overwrite",  # pasted after the demo, OUT/train holds this run: VeRL would resume from it
        )
        self.r.info(f"VeRL log: {display_path(out / 'train.log')}")

        def on_event(ev: Any) -> None:
            if ev.kind != "step":
                return
            parts = [f"{label} {ev.metrics[key]:.4f}" for key, label in (("train/loss", "loss"), ("val/loss", "val loss")) if key in ev.metrics]
            if parts:
                self.r.info(f"step {ev.step}: " + ", ".join(parts))

        result = train_offline(opts, on_event)
        res.details = result.to_dict()
        res.outputs = [out / "train.log"] + ([result.hf_model] if result.hf_model else [])
        if result.returncode != 0:
            raise RuntimeError(result.failure())
        loss = (
            f", loss {result.first_loss:.3f} -> {result.last_loss:.3f}"
            if result.first_loss is not None and result.last_loss is not None
            else ""
        )
        res.summary = f"{result.steps} steps in {result.wall_seconds:.0f} s{loss}; model exported to {result.hf_model}"
