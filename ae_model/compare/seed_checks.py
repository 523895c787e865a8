"""Does the seed control what it claims to? Checks the fingerprints the jobs of a comparison
recorded (``result["fingerprints"]``, made by ``ae_model.fingerprint``): the arms of one seed
must start from the same weights and see the same batches; different seeds must differ.
Torch-free: the API runs it on every comparison it shows.
"""

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ae_model.compare.image_bootstrap import wrap


@dataclass(frozen=True)
class SeedControl:
    """The outcome: ``mismatches`` (each a sentence), ``notes`` (what is not a fault, but
    worth knowing), ``unrecorded`` (``"arm seed s"`` of jobs without fingerprints) and how
    many jobs were ``checked``."""

    checked: int
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``mismatch``, ``ok`` or ``not recorded`` (fewer than two jobs with fingerprints)."""
        if self.mismatches:
            return "mismatch"
        return "ok" if self.checked >= 2 else "not recorded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "checked": self.checked,
            "mismatches": list(self.mismatches),
            "notes": list(self.notes),
            "unrecorded": list(self.unrecorded),
        }

    def lines(self) -> list[str]:
        """``format_table``'s lines."""
        if self.status == "ok":
            head = (
                f"seed control: ok ({self.checked} jobs): the arms of each seed started from the "
                "same weights and saw the same batches; different seeds differed"
            )
        elif self.status == "mismatch":
            head = "seed control: MISMATCH, the paired differences are not what they claim:"
        else:
            head = "seed control: not checked (the jobs recorded no fingerprints)"
        said = [head, *self.mismatches, *self.notes]
        if self.unrecorded and self.checked:
            said.append(f"no fingerprints recorded: {', '.join(self.unrecorded)}")
        return ["", *(line for text in said for line in wrap(text))]


def check_seed_control(per_arm: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> SeedControl:
    """Check the fingerprints in ``per_arm[arm][seed]`` (each a job's ``result``)."""
    prints: dict[int, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    unrecorded = []
    for arm, seeds in per_arm.items():
        for seed, result in sorted(seeds.items()):
            if isinstance(result.get("fingerprints"), Mapping):
                prints[seed][arm] = result["fingerprints"]
            else:
                unrecorded.append(f"{arm} seed {seed}")
    notes: list[str] = []
    mismatches = [m for seed in sorted(prints) for m in _same_seed(seed, prints[seed], notes)]
    for arm in per_arm:
        by_seed = {seed: arms[arm] for seed, arms in sorted(prints.items()) if arm in arms}
        _different_seeds(arm, by_seed, mismatches, notes)
    checked = sum(len(arms) for arms in prints.values())
    return SeedControl(checked, mismatches, notes, unrecorded)


def _same_seed(seed: int, arms: Mapping[str, Mapping[str, Any]], notes: list[str]) -> list[str]:
    """The ways the arms of ``seed`` differ in what they started from or were fed. Batches are
    compared among arms with the same ``data_settings`` only: an arm that changes the input
    size, batch or augmentation changes its batches on purpose (said once in ``notes``)."""
    found = _differing(seed, arms, "weights", "started from different weights")
    fed_alike: dict[str, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for arm, prints in arms.items():
        fed_alike[str(prints.get("data_settings"))][arm] = prints
    for group in fed_alike.values():
        found += _differing(seed, group, "data_stream", "saw different training batches")
    if len(fed_alike) > 1:
        groups = " | ".join(", ".join(group) for group in fed_alike.values())
        note = (
            "arms fed with other batch settings (input size, batch, augmentation or length) "
            f"have their batches compared within each group only: {groups}"
        )
        if note not in notes:
            notes.append(note)
    return found


def _differing(seed: int, arms: Mapping[str, Mapping[str, Any]], key: str, said: str) -> list[str]:
    """A mismatch when the arms of ``seed`` do not all have the same ``key``."""
    values = {arm: prints.get(key) for arm, prints in arms.items()}
    if len({str(v) for v in values.values()}) < 2:
        return []
    listed = ", ".join(f"{arm} {_short(v)}" for arm, v in values.items())
    return [f"seed {seed}: the arms {said} ({listed})"]


def _different_seeds(
    arm: str, by_seed: Mapping[int, Mapping[str, Any]], mismatches: list[str], notes: list[str]
) -> None:
    """Seeds of ``arm`` with equal fingerprints: a mismatch, except equal weights that start
    weights set in full (``init`` with every layer loaded)."""
    for key in ("weights", "data_stream"):
        groups: dict[str, list[int]] = defaultdict(list)
        for seed, prints in by_seed.items():
            if prints.get(key) is not None:
                groups[prints[key]].append(seed)
        for seeds in (s for s in groups.values() if len(s) > 1):
            listed = ", ".join(map(str, seeds))
            if key == "weights" and all(by_seed[s].get("start") for s in seeds):
                note = (f"seeds {listed} started from identical weights: the start weights (init) "
                        "set every layer")  # fmt: skip
                if note not in notes:
                    notes.append(note)
                continue
            said = "initial weights" if key == "weights" else "training batches"
            mismatch = f"seeds {listed} had identical {said}: the seed did not reach them"
            mismatches.append(f"{arm}: {mismatch}")


def _short(value: Any) -> str:
    """A fingerprint's first 12 characters, or the value as it is."""
    return value[:12] if isinstance(value, str) else str(value)
