"""The same search with several seeds, one run folder each, and how far their genotypes agree.

``<out>/seed-<s>/`` holds seed ``s``'s search run (resumable like any other); ``<out>/seed_agreement.json``
the agreement of the derived genotypes beside the chance level of random genotypes of the same
space (:mod:`edgenas.search.decisiveness` says how both are counted).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenas.errors import EdgenasError
from edgenas.files import write_json
from edgenas.genotypes import Genotype
from edgenas.search.decisiveness import agreement_report
from edgenas.search.loop import SearchConfig, SearchResult

AGREEMENT_FORMAT = "edgenas.seed-agreement"


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` -> [0, 1, 2]: at least two distinct non-negative integers."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise EdgenasError(f"cannot read --seeds {text!r}",
                           "give comma-separated integers, e.g. --seeds 0,1,2") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise EdgenasError(f"--seeds {text!r} must name at least two distinct non-negative seeds",
                           "e.g. --seeds 0,1,2")
    return seeds


def seed_folder(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


@dataclass
class SeedsResult:
    out: Path
    runs: dict[int, SearchResult]
    agreement: dict[str, Any] | None  # None until every seed has finished

    def summary(self) -> dict[str, Any]:
        return {"out": str(self.out), "seeds": {str(s): r.summary() for s, r in self.runs.items()},
                "agreement": self.agreement,
                "agreement_file": str(self.out / "seed_agreement.json") if self.agreement else None}


def check_folders(out: Path, seeds: Sequence[int], resume: bool) -> None:
    """Refuse, before any search runs, a parent that is itself a single search run, and (without
    ``resume``) a seed folder that already holds a run."""
    if (out / "history.jsonl").exists() or (out / "last.pt").exists():
        raise EdgenasError(f"{out} is a single search run folder; a multi-seed search writes seed-<s>/ "
                           "sub-folders and its own agreement file",
                           "choose another --out for --seeds")
    if not resume:
        taken = [s for s in seeds if (seed_folder(out, s) / "last.pt").exists()]
        if taken:
            raise EdgenasError(f"{seed_folder(out, taken[0])} already holds a search run",
                               "pass --resume to continue the seeds' runs, or choose another --out folder")


def search_seeds(run_one: Callable[[SearchConfig, Path, bool], SearchResult], cfg: SearchConfig,
                 seeds: Sequence[int], ops: Sequence[str], *, out: str | Path, resume: bool = False,
                 accept: Callable[[Genotype], bool] | None = None) -> SeedsResult:
    """Run ``run_one(cfg with seed s, seed folder, resume)`` per seed, then measure agreement.

    With ``resume``, seeds with a checkpoint continue from it and seeds without one start, so an
    interrupted multi-seed search finishes where it stopped. ``accept`` restricts the random
    genotypes of the chance level (e.g. to those meeting the search's budget); without it the
    chance level is exact.
    """
    out = Path(out)
    check_folders(out, seeds, resume)
    runs = {s: run_one(dataclasses.replace(cfg, seed=s), seed_folder(out, s),
                       resume and (seed_folder(out, s) / "last.pt").exists()) for s in seeds}
    if any(r.loop.stopped_early for r in runs.values()):
        return SeedsResult(out, runs, None)
    report = agreement_report([runs[s].genotype for s in seeds], ops, accept)
    report = {"seed_list": list(seeds), "runs": {str(s): str(runs[s].run) for s in seeds}, **report}
    write_json(out / "seed_agreement.json", AGREEMENT_FORMAT, 1, report)
    return SeedsResult(out, runs, report)


__all__ = ["AGREEMENT_FORMAT", "SeedsResult", "check_folders", "parse_seeds", "search_seeds", "seed_folder"]
