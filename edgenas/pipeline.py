"""``edgenas run``: profile -> prune -> search -> train -> export in one run folder, then a report.

Each stage calls the same library function its single command calls (no second implementation)
and writes into the run folder::

    <run>/config.json      the effective configuration (TOML file + command-line overrides)
    <run>/stages.json      which stages have completed
    <run>/profile.json     + figures/profile.png
    <run>/space.json
    <run>/search/          search run (checkpoints, history, genotype.json, figures)
    <run>/budget.json      constrained vs unconstrained genotype (when a budget is set)
    <run>/train/           retraining run (checkpoints, history, figures)
    <run>/export/          model.onnx, report.json, report.md
    <run>/report.md, report.html

``--resume`` skips completed stages and resumes an interrupted search or training from its last
epoch checkpoint, so the result equals that of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgenas.distributed import dist_from_env
from edgenas.errors import EdgenasError
from edgenas.export import ExportSettings
from edgenas.files import claim_run_folder, read_json, write_json
from edgenas.profiling import DEFAULT_SHAPES, Profile, ProfileOptions, parse_shapes, profile_ops
from edgenas.search.budgets import BUDGET_FORMAT, BudgetPlan, BudgetSpec, parse_latency, plan_budgets_for_data
from edgenas.search.loop import SearchConfig, search
from edgenas.space import PruneConfig, SearchSpace, prune
from edgenas.train import TrainConfig, train
from edgenas.values import check_seed, conform, field_types

STAGES = ("profile", "prune", "search", "train", "export", "report")
CONFIG_FORMAT = "edgenas.pipeline-config"
STAGES_FORMAT = "edgenas.pipeline-stages"
VERSION = 1
#: The top-level keys of a run's TOML file and their types.
TOP_LEVEL: dict[str, type] = {"data": str, "method": str, "device": str, "seed": int}


@dataclass(frozen=True)
class PipelineConfig:
    """The effective configuration of a run; each table maps onto one library config type."""

    data: str = "fashion-mnist"
    method: str = "el_darts"
    device: str = "auto"
    seed: int = 0
    profile: ProfileOptions = field(default_factory=ProfileOptions)
    prune: PruneConfig = field(default_factory=PruneConfig)
    method_settings: dict[str, Any] = field(default_factory=dict)
    search: SearchConfig = field(default_factory=SearchConfig)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportSettings = field(default_factory=ExportSettings)

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if dataclasses.is_dataclass(v):
                return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
            if isinstance(v, (tuple, list)):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return plain(self)


def _section_types() -> dict[str, type]:
    """The tables of a run's TOML file and the config type each one maps onto."""
    return {"profile": ProfileOptions, "prune": PruneConfig, "search": SearchConfig,
            "budget": BudgetSpec, "train": TrainConfig, "export": ExportSettings}


def _typed(cls: type, table: Mapping[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, naming unknown keys (lists become tuples)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - fields)
    if unknown:
        raise EdgenasError(f"{where}: unknown key {unknown[0]!r}", f"valid keys: {', '.join(sorted(fields))}")
    types = field_types(cls)
    try:
        return cls(**{k: conform(v, types[k], k) for k, v in table.items()})
    except EdgenasError as e:  # say which file and table the value came from
        raise EdgenasError(f"{where}: {e.message}", e.hint) from None


def _budget_values(table: dict[str, Any]) -> dict[str, Any]:
    """Budget strings as users write them: mac_budget = "600M", latency_budget = "12ms"."""
    from edgenas.costs import parse_count

    out = dict(table)
    if out.get("mac_budget") is not None:
        out["mac_budget"] = parse_count(out["mac_budget"], "mac_budget")
    if "latency_budget" in out:
        value = out.pop("latency_budget")
        out["latency_budget_ms"] = None if value is None else parse_latency(value, "latency_budget")
    return out


def load_config(path: str | Path | None, overrides: Mapping[str, Any]) -> PipelineConfig:
    """The TOML file (if any) with command-line ``overrides`` applied on top.

    Overrides use the flat CLI names: data, method, device, seed, mac_budget, latency_budget.
    """
    doc: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise EdgenasError(f"config file {path} does not exist",
                               "check the path; edgenas/configs/demo.toml is an example")
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise EdgenasError(f"config file {path} is not valid TOML ({e})", "fix the file") from None
    where = str(path) if path is not None else "config"
    top = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    for key in ("data", "method", "device", "seed"):
        if overrides.get(key) is not None:
            top[key] = overrides[key]
    budget = dict(tables.get("budget", {}))
    for key in ("mac_budget", "latency_budget"):
        if overrides.get(key) is not None:
            budget[key] = overrides[key]
    try:
        tables["budget"] = _budget_values(budget)
    except EdgenasError as e:
        raise EdgenasError(f"{where} [budget]: {e.message}", e.hint) from None
    known = set(TOP_LEVEL)
    unknown = sorted(set(top) - known) + sorted(set(tables) - set(_section_types()) - {"method_settings"})
    if unknown:
        raise EdgenasError(f"{where}: unknown key or table {unknown[0]!r}",
                           f"top-level keys: {', '.join(sorted(known))}; tables: "
                           f"{', '.join([*_section_types(), 'method_settings'])}")
    try:
        for key, hint in TOP_LEVEL.items():
            if key in top:
                top[key] = conform(top[key], hint, key)
        seed = check_seed(top.get("seed", 0))
    except EdgenasError as e:
        raise EdgenasError(f"{where}: {e.message}", e.hint) from None
    sections = {}
    for name, cls in _section_types().items():
        table = dict(tables.get(name, {}))
        if name in ("search", "train") and "seed" in {f.name for f in dataclasses.fields(cls)}:
            table.setdefault("seed", seed)
        sections[name] = _typed(cls, table, f"{where} [{name}]")
    return PipelineConfig(data=str(top.get("data", "fashion-mnist")), method=str(top.get("method", "el_darts")),
                          device=str(top.get("device", "auto")), seed=seed,
                          method_settings=dict(tables.get("method_settings", {})), **sections)


# --- the run --------------------------------------------------------------------------------------

@dataclass
class StageState:
    """Which stages completed, and the stage the last attempt failed in (if it failed)."""

    path: Path
    done: list[str] = field(default_factory=list)
    failed: str | None = None

    @classmethod
    def read(cls, path: Path) -> StageState:
        if not path.exists():
            return cls(path)
        doc = read_json(path, STAGES_FORMAT, VERSION, "stage record")
        failed = doc.get("failed")
        return cls(path, [s for s in doc.get("completed", []) if s in STAGES], failed if failed in STAGES else None)

    def write(self) -> None:
        write_json(self.path, STAGES_FORMAT, VERSION, {"completed": self.done, "failed": self.failed})

    def mark(self, stage: str) -> None:
        if stage not in self.done:
            self.done.append(stage)
        self.failed = None
        self.write()


#: The configuration each stage's output depends on (top-level keys and tables of PipelineConfig).
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "profile": ("device", "profile"),
    "prune": ("prune",),
    "search": ("data", "seed", "method", "method_settings", "search", "budget"),
    "train": ("data", "seed", "train"),
    "export": ("data", "export"),
    "report": (),
}


def produced(out: Path, stage: str, state: StageState) -> bool:
    """Whether ``stage`` left output a later attempt builds on (completed, or a checkpoint)."""
    return stage in state.done or (stage in ("search", "train") and (out / stage / "last.pt").exists())


def check_rerun(out: Path, saved: dict[str, Any], cfg: PipelineConfig, state: StageState) -> None:
    """A rerun may change any setting whose stages produced nothing yet (the usual case after a
    stage failed on a bad setting); changing what a produced stage used is refused, naming it."""
    from edgenas.checkpoints import canonical, first_difference

    now = canonical(cfg.to_dict())
    for stage in STAGES:
        if not produced(out, stage, state):
            continue
        for key in STAGE_INPUTS[stage]:
            diff = first_difference(canonical(saved.get(key, "<absent>")), now.get(key, "<absent>"), key)
            if diff is not None:
                where, had, asked = diff
                raise EdgenasError(f"{out} was started with another configuration: its {stage} stage ran with "
                                   f"{where}={had!r}, this run asks for {where}={asked!r}",
                                   "rerun with the settings it used, or choose another --out for the new ones")


def budget_for_training(cfg: PipelineConfig) -> BudgetSpec:
    """The [budget] table for the network this run trains and exports: the [train] width and depth
    fill whatever it leaves unset."""
    b = cfg.budget
    return dataclasses.replace(b, channels=b.channels or cfg.train.channels, layers=b.layers or cfg.train.layers)


def check_stages(cfg: PipelineConfig, device: torch.device) -> None:
    """Everything about the later stages that can be known before the first one runs: the method
    and its settings, the supernet it builds, the budgets' feasibility and consistency."""
    from edgenas.ops import DARTS_OPS, parse_ops
    from edgenas.search.methods import make_method
    from edgenas.search.supernet import SupernetConfig

    method = make_method(cfg.method, cfg.method_settings)
    # pruning only removes operators, so what fails on every candidate fails on the pruned space
    candidates = SearchSpace(tuple(parse_ops(list(cfg.profile.ops)) if cfg.profile.ops else DARTS_OPS))
    space = method.resolve_space(candidates)
    s = cfg.search
    method.check(SupernetConfig(ops=space.ops, C=s.channels, layers=s.layers or method.default_layers,
                                steps=s.nodes, cell_residual=method.cell_residual))
    if cfg.profile.runtime == "ort" and cfg.profile.batch != cfg.export.batch:
        raise EdgenasError(f"[profile] batch {cfg.profile.batch} differs from [export] batch {cfg.export.batch}: the "
                           "export compares the profile's prediction with onnxruntime at its own batch",
                           f"set [profile] batch = {cfg.export.batch}")
    if cfg.profile.mode != "forward":  # the export compares the profile's prediction with inference
        raise EdgenasError(f"the export predicts inference from the run's profile, but [profile] mode is "
                           f"{cfg.profile.mode!r}", 'set [profile] mode = "forward"')
    b = cfg.budget
    if b.latency_budget_ms is not None:
        if cfg.profile.dtype != "fp32":
            raise EdgenasError(f"[profile] dtype is {cfg.profile.dtype!r}, but the exported model a latency budget "
                               "is checked on is fp32", 'set [profile] dtype = "fp32"')
        if cfg.profile.batch != b.budget_batch:
            raise EdgenasError(f"[profile] batch is {cfg.profile.batch}, but the latency budget is for "
                               f"[budget] budget_batch {b.budget_batch}", "make the two equal")
    if b.mac_budget is not None:  # the latency model needs the profile this run measures
        spec = dataclasses.replace(budget_for_training(cfg), latency_budget_ms=None)
        plan_budgets_for_data(spec, cfg.data, space.ops, s.nodes, profile_path=None, device=device, seed=cfg.seed)


@dataclass
class RunResult:
    out: Path
    ran: list[str]
    skipped: list[str]
    report_md: Path
    report_html: Path
    summary: dict[str, Any]


Log = Callable[[str], None]


def run_pipeline(cfg: PipelineConfig, out: str | Path, *, device: torch.device, resume: bool = False,
                 quiet: bool = False, log: Log = lambda _m: None,
                 stop_after_stage: str | None = None, stop_after_epochs: int | None = None) -> RunResult:
    """Run every stage into ``out``. ``stop_after_stage``/``stop_after_epochs`` end the call early,
    as an interruption would (for tests of ``resume``)."""
    out = Path(out)
    if dist_from_env().active:
        # profiling and export measure one device in one process; only search and train spread
        raise EdgenasError(
            "edgenas run does not run under torchrun (its profile and export stages time one process)",
            f"run it plainly, or run the stages with torchrun --nproc_per_node N -m edgenas search "
            f"--space {out}/space.json ... and torchrun --nproc_per_node N -m edgenas train ...")
    with claim_run_folder(out, "pipeline", legacy=_legacy_kind,
                          worth_keeping=lambda root: (root / "stages.json").exists()):
        check_stages(cfg, device)
        return _run(cfg, out, device=device, resume=resume, quiet=quiet, log=log,
                    stop_after_stage=stop_after_stage, stop_after_epochs=stop_after_epochs)


def _legacy_kind(root: Path) -> str | None:
    """A pipeline folder written before folders carried a marker holds its config.json."""
    try:
        doc = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return "pipeline" if isinstance(doc, dict) and doc.get("format") == CONFIG_FORMAT else None


def _run(cfg: PipelineConfig, out: Path, *, device: torch.device, resume: bool, quiet: bool, log: Log,
         stop_after_stage: str | None, stop_after_epochs: int | None) -> RunResult:
    config_path = out / "config.json"
    state = StageState.read(out / "stages.json")
    if config_path.exists():
        if not resume and state.failed is None:
            raise EdgenasError(f"run folder {out} already holds a run",
                               "add --resume to continue it, or choose another --out")
        saved = read_json(config_path, CONFIG_FORMAT, VERSION, "run config")
        check_rerun(out, saved.get("config") or {}, cfg, state)
    if not {"search", "train", "export"} <= set(state.done):
        # a missing or broken dataset must stop the run before minutes of profiling, not after
        from edgenas.data.load import load_data

        load_data(cfg.data, subset=cfg.search.subset, seed=cfg.seed)
    write_json(config_path, CONFIG_FORMAT, VERSION, {"config": cfg.to_dict()})
    stages = _Stages(cfg, out, device, quiet, log, stop_after_epochs)
    ran: list[str] = []
    for stage in STAGES:
        if stage in state.done:
            log(f"[{stage}] done already, skipped")
            continue
        log(f"[{stage}] running")
        state.write()  # from here on the folder holds work a rerun continues from
        try:
            finished = getattr(stages, stage)()
        except EdgenasError:
            # recorded so that a rerun with a corrected configuration may continue this folder
            state.failed = stage
            state.write()
            raise
        if finished is False:  # interrupted inside (stop_after_epochs)
            return _result(out, ran, state, stages)
        state.mark(stage)
        ran.append(stage)
        if stage == stop_after_stage:
            break
    return _result(out, ran, state, stages)


def _result(out: Path, ran: list[str], state: StageState, stages: _Stages) -> RunResult:
    return RunResult(out, ran, [s for s in state.done if s not in ran], out / "report.md", out / "report.html",
                     stages.summary())


class _Stages:
    """One method per stage; each calls the library function its single command uses."""

    def __init__(self, cfg: PipelineConfig, out: Path, device: torch.device, quiet: bool, log: Log,
                 stop_after_epochs: int | None) -> None:
        self.cfg, self.out, self.device, self.quiet, self.log = cfg, out, device, quiet, log
        self.stop = stop_after_epochs

    @property
    def profile_path(self) -> Path:
        return self.out / "profile.json"

    def profile(self) -> bool:
        from edgenas.ops import DARTS_OPS, parse_ops
        from edgenas.report import plot_profile

        p = self.cfg.profile
        ops = parse_ops(list(p.ops)) if p.ops else list(DARTS_OPS)
        shapes = parse_shapes(p.shapes) if p.shapes else list(DEFAULT_SHAPES)
        # the export's thread count (0: physical cores), so profile and export time alike
        prof = profile_ops(self.device, ops, shapes, batch=p.batch, dtype=p.dtype, mode=p.mode, runtime=p.runtime,
                           provider=p.provider if p.runtime == "ort" else None, threads=self.cfg.export.threads,
                           settings=p.settings())
        prof.save(self.profile_path)
        plot_profile(prof, self.out / "figures" / "profile.png")
        return True

    def prune(self) -> bool:

        space = prune(Profile.load(self.profile_path), self.cfg.prune, source=str(self.profile_path))
        space.save(self.out / "space.json")
        self.log(f"[prune] kept {', '.join(space.ops)}")
        return True

    def _budget_plan(self, ops: tuple[str, ...]) -> BudgetPlan | None:
        """Budgets refer to the network this run trains and exports (:func:`budget_for_training`)."""

        # the run measures what its profile lacks on the device it profiled
        spec = dataclasses.replace(budget_for_training(self.cfg), profile_missing=True)
        return plan_budgets_for_data(spec, self.cfg.data, ops, self.cfg.search.nodes,
                                     profile_path=self.profile_path, device=self.device, seed=self.cfg.seed)

    def search(self) -> bool:
        from edgenas.search.methods import make_method

        method = make_method(self.cfg.method, self.cfg.method_settings)
        space = method.resolve_space(SearchSpace.load(self.out / "space.json"))
        plan = self._budget_plan(space.ops) if self.cfg.budget.active else None
        run = self.out / "search"
        result = search(method, space, self.cfg.search, self.cfg.data, out=run, device=self.device,
                        resume=(run / "last.pt").exists(), stop_after=self.stop, quiet=self.quiet,
                        budget=plan, space_source=str(self.out / "space.json"))
        if result.loop.epochs_done < self.cfg.search.epochs:
            return False
        if result.budget is not None:  # the run folder's copy of the search's budget check
            write_json(self.out / "budget.json", BUDGET_FORMAT, 1, result.budget)
        return True

    def train(self) -> bool:
        from edgenas.genotypes import load_genotype

        genotype = load_genotype(str(self.out / "search" / "genotype.json"))
        run = self.out / "train"
        result = train(genotype, self.cfg.train, self.cfg.data, out=run, device=self.device,
                       resume=(run / "last.pt").exists(), stop_after=self.stop, quiet=self.quiet,
                       genotype_name=f"{self.cfg.method} search")
        return result.loop.epochs_done >= self.cfg.train.epochs

    def export(self) -> bool:
        from edgenas.export import run_export

        # measured where it profiled; a latency-budgeted run says whether the exported model meets it
        settings = dataclasses.replace(self.cfg.export, profile_missing=True,
                                       latency_budget_ms=self.cfg.budget.latency_budget_ms)
        run_export(self.out / "train", data=self.cfg.data, out=self.out / "export", settings=settings,
                   device=self.device, profile=self.profile_path, log=self.log)
        return True

    def report(self) -> bool:
        from edgenas.run_report import write_run_report

        write_run_report(self.out, self.cfg.to_dict())
        return True

    def summary(self) -> dict[str, Any]:
        from edgenas.run_report import collect

        return collect(self.out)
