"""The paper's Figure 5: test NDCG@1 of MoLoRec against the number of unlabeled test
prompts its entropy-guided mixture learns on.

An analysis curve, not a selection: every choice is the table cell's own (its specific
module, the entropy learning rate chosen on validation), only the prompt count varies,
and nothing is chosen from the curve. Each point runs the cell's code path (the
mixture learned on a seeded draw of `n` prompts from the first scoring batch, then the
test users scored), so the point at the cell's own count reproduces the cell's NDCG@1.
Points are cached in the run's store, keyed on the cell and the count.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.api import TrainData, Validation
from bench.cells import SCORE_BATCH, _prepare, score_all
from bench.results import metric_rows
from molorec import selection as SEL
from molorec.systems import MoLoRec
from protocols.files import ProtocolFiles
from protocols.store import Store


class _FixedChoices(MoLoRec):
    """MoLoRec with a finished cell's choices; fit() selects nothing."""

    choices: dict[str, Any] = {}

    def fit(self, data: TrainData, valid: Validation) -> None:
        arts = self.train_artifacts(data)
        lr = self.choices.get("specific_lr")
        specific = arts["specific"][lr] if lr is not None else next(
            iter(arts["specific"].values()))
        self.parts = (arts["general"], specific)
        self.info.update(mixture_method="entropy", entropy_lr=self.choices["entropy_lr"])
        self._adapted = False

    def at(self, n: int) -> None:
        """Learn the mixture afresh on n prompts at the next score() call."""
        self.info["entropy_n_prompts"] = int(n)
        self._adapted = False


def count_selected(meta: dict[str, Any]) -> bool:
    """Whether the cell chose its prompt count on validation (several counts offered) or
    took the one its profile fixes."""
    return len(SEL.as_list(meta["config"]["mixture"]["entropy"].get("n_prompts", 50))) > 1


def prompt_counts(meta: dict[str, Any], counts: Sequence[int], n_users: int) -> list[int]:
    """The counts to draw: those asked for that the first scoring batch can supply, plus
    the cell's own count (so the curve passes through the table's value)."""
    cap = min(n_users, SCORE_BATCH)
    own = int(meta["describe"]["entropy_n_prompts"])
    return sorted({int(n) for n in counts if 1 <= int(n) <= cap} | {own})


def prompt_count_points(proto: ProtocolFiles, meta: dict[str, Any], counts: Sequence[int],
                        workdir: str | Path, log: Callable[[str], None] = print
                        ) -> list[dict[str, Any]]:
    """One point per prompt count for the MoLoRec cell described by `meta` (its cell.json),
    on the protocol it was scored on."""
    info = meta["describe"]
    if info.get("mixture_method") != "entropy":
        raise ValueError(f"{meta['system']} on {meta['setting']}: mixture method "
                         f"{info.get('mixture_method')!r}, not entropy-guided")
    store = Store(Path(workdir) / "analysis")
    wanted = prompt_counts(meta, counts, len(proto.test_requests))
    found: dict[int, dict[str, Any]] = {}
    for n in wanted:
        path = store.path("prompt-count", {"cell": meta["key"], "n": n}) / "point.json"
        if path.exists():
            found[n] = json.loads(path.read_text())
    missing = [n for n in wanted if n not in found]
    if missing:
        _prepare(int(meta["seed"]), True)  # seeds and threads as the cell had them
        system = _FixedChoices(meta["config"], int(meta["seed"]), str(workdir))
        system.choices = info
        try:
            system.fit(proto.data, proto.valid)
            positives = proto.test_positives()
            users = [r.user for r in proto.test_requests]
            cands = [r.candidates for r in proto.test_requests]
            for n in missing:
                log(f"figure 5: {meta['dataset']} {meta['setting']} seed {meta['seed']}: "
                    f"{n} prompts")
                system.at(n)
                scores = score_all(system, proto.test_requests, f"{n} prompts")
                _, values = metric_rows(users, positives, cands, scores)
                point = {"ndcg@1": float(np.mean(values["NDCG@1"])),
                         "weights_by_block": system.info["weights_by_block"],
                         "test_entropy": system.info["test_entropy"]}
                store.ensure("prompt-count", {"cell": meta["key"], "n": n},
                             lambda tmp, p=point: (tmp / "point.json").write_text(
                                 json.dumps(p, indent=1)))
                found[n] = point
        finally:
            system.close()
    return [{"dataset": meta["dataset"], "setting": meta["setting"], "seed": meta["seed"],
             "n_prompts": n, "ndcg@1": round(found[n]["ndcg@1"], 6),
             "entropy_lr": info["entropy_lr"], "table_n_prompts": info["entropy_n_prompts"],
             "table_n_prompts_selected": count_selected(meta)}
            for n in wanted]
