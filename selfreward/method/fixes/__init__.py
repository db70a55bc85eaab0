"""The small-model fixes of self-rewarding: each one registered object in one module of this folder, off by
default (the paper's recipe), switched on by its own keys of the `aift` section, in a whole run's iterations
and in the ablation's variants alike.

The paper showed its recipe at 70B; at 7-8B public reproductions see little or no gain, and later work aims
at what a small model lacks, a reliable self-judge (CREAM, Meta-Rewarding, Temporal Self-Rewarding). A fix
says (`Fix`): its name and its options (keys of `aift`, with defaults and types), when it is on, what it
needs of the rest of the config (`check`: a one-line error before any stage), how it prepares an
iteration's candidates (`prepare`: implicit rewards, another model's judgments or candidates), how it picks
the pair (`choose`, at most one fix on), what it adds to a pair (`annotate`: a weight) or beside the pairs
(`more_pairs`: judge pairs), and how it describes itself. `preference_pairs` is the one place an iteration
(`method.loop.run_iteration`) and a variant (`method.loop.run_variant`) turn candidates into pairs.

The registry: every module here is imported, and with it every fix it `register`s; so is every module named
in the environment variable SELFREWARD_FIXES (comma-separated; a plugin outside the package).
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from selfreward.config import ConfigError, coerce, plain_section
from selfreward.method.self_instruction import best_and_worst, pair, usable
from selfreward.plugins import import_plugins

_REGISTERED: dict[str, "Fix"] = {}


@dataclass(frozen=True)
class Option:
    """One key a fix reads from the `aift` section: its default (the paper's recipe) and its type hint."""
    default: Any
    type: Any
    help: str = ""


@dataclass
class Step:
    """What a fix may use in one iteration from M_t: the run, the section it was switched on in, the models."""
    cfg: Any
    run: Any
    t: int
    section: Any  # the `aift` section (the run's, or an ablation variant's)
    counts: dict = field(default_factory=dict)  # what the fixes add to the stage's counts

    @property
    def current(self) -> str:
        return str(self.run.model(f"m{self.t}"))

    @property
    def seed(self) -> int:
        return self.cfg.seed + 100 * self.t

    def model_before(self, k: int) -> str:
        """M_k (M_0: the base model)."""
        from selfreward.method.model_refs import model_path

        return model_path(self.cfg, self.run, "base") if k <= 0 else str(self.run.model(f"m{k}"))

    def model(self, reference: str) -> str:
        from selfreward.method.model_refs import model_path

        return model_path(self.cfg, self.run, reference)

    def backend(self, path: str):
        """The configured engine for a model folder, for the length of a `with` block."""
        from selfreward.generation import loaded_backend

        return loaded_backend(path, self.cfg)


class Fix:
    name: str = ""  # its name in the chapters and the ablation
    options: dict[str, Option] = {}  # its keys in the `aift` section
    source: str = ""  # where it comes from (a paper)
    rule: str = ""  # what it does, in one sentence (chapters, README)
    chooses: bool = False  # it picks the pair itself (`choose`); at most one such fix is on
    weighs_pairs: bool = False  # its pairs carry a `weight` for the DPO loss (the lean DPO loss reads it)
    order: int = 100  # its place when several prepare the same candidates

    def value(self, section, key: str):
        """The option's value in `section` (its default when unset)."""
        return section.options.get(key, self.options[key].default)

    def on(self, section) -> bool:
        """Whether the section switches it on: any of its options away from its default."""
        return any(self.value(section, key) != option.default for key, option in self.options.items())

    def check(self, section, key: str, t: int, cfg) -> None:
        """What it needs of the rest of the config, from the first iteration it runs in (M_t): a ConfigError
        naming `key.option` when it cannot apply."""

    def prepare(self, step: Step, records: list[dict]) -> None:
        """Add to the candidate records what its rule reads (in place)."""

    def choose(self, scored: list[dict], record: dict, section) -> tuple[dict, dict] | None:
        """(chosen, rejected) among a prompt's usable candidates, or None (a fix with `chooses`)."""
        raise NotImplementedError

    def annotate(self, made: dict, scored: list[dict], section) -> None:
        """Add to a pair what its rule gives it (in place)."""

    def more_pairs(self, step: Step, records: list[dict]) -> list[dict]:
        """Pairs of its own, trained beside the answer pairs."""
        return []

    def no_pair_reason(self, records: list[dict], section, max_new_tokens: int) -> str:
        """Why no pair came of its rule, beyond the usual, or ''."""
        return ""

    def describe(self, section) -> str:
        values = ", ".join(f"{key} = {self.value(section, key)!r}" for key in self.options)
        return f"**{self.name}** ({values}): {self.rule}" + (f" ({self.source})" if self.source else "")


def register(cls: type[Fix]) -> type[Fix]:
    """A class decorator: one instance of `cls` joins the fixes."""
    instance = cls()
    if not instance.name or not instance.options:
        raise ValueError(f"fix {cls.__name__} needs a name and at least one option")
    taken = {key: other.name for other in _REGISTERED.values() if other.name != instance.name for key in other.options}
    for key in instance.options:
        if key in taken:
            raise ValueError(f"fix {instance.name}: option {key!r} is already {taken[key]}'s")
    _REGISTERED[instance.name] = instance
    return cls


def _discover():
    package = importlib.import_module(__name__)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    import_plugins("SELFREWARD_FIXES")


def registered() -> list[Fix]:
    """Every registered fix, in order."""
    _discover()
    return sorted(_REGISTERED.values(), key=lambda f: (f.order, f.name))


def get(name: str) -> Fix:
    _discover()
    return _REGISTERED[name]


def on(section) -> list[Fix]:
    """The fixes a section switches on, in order."""
    return [fix for fix in registered() if fix.on(section)]


def options_set(section) -> dict:
    """The fix options a section sets (away from their defaults)."""
    return {key: fix.value(section, key) for fix in on(section) for key in fix.options
            if fix.value(section, key) != fix.options[key].default}


def plain(section) -> dict:
    """The section as plain values with its fix options, for the fingerprint of a variant's own options."""
    return plain_section(section)


def fingerprint_revision(section) -> str:
    """For the fingerprint of a stage that trains weighted pairs: until 2026-12-03 the Trainer dropped the
    `weight` column before the loss saw it (a consistency run trained as the paper's recipe), so such stages
    from before are not taken as done. Empty for every other stage, whose fingerprints stay as they were."""
    return "|weights reach the loss" if any(fix.weighs_pairs for fix in on(section)) else ""


# ---------------------------------------------------------------- the rules, checked before any stage

def check(cfg) -> None:
    """Every fix option of the run's `aift` section and of each ablation variant: a known key of a registered
    fix, a value of its type (coerced; left out when at its default, so that fingerprints count only what is
    set), and what each fix on needs of the rest of the config, from the first iteration it runs in."""
    sections = [("aift", cfg.aift, 1)] + [(f"ablation.variants.{n}", s, t) for n, s, t in cfg.ablation_variants()]
    for key, section, t in sections:
        _coerce_options(section, key)
        if key == "aift" and cfg.iterations == 0:
            continue
        fixes = on(section)
        choosers = [f for f in fixes if f.chooses]
        if len(choosers) > 1:
            raise ConfigError(f"{key}: {' and '.join(f.name for f in choosers)} each pick the pair; switch on one")
        if fixes and section.objective != "dpo":
            raise ConfigError(f"{key}.{next(iter(fixes[0].options))}: the small-model fixes shape DPO pairs, and "
                              f"aift.objective {section.objective} trains on the positives")
        for fix in fixes:
            if fix.weighs_pairs and cfg.dpo.logprobs != "selected":
                raise ConfigError(f"{key}.{next(iter(fix.options))}: weights each pair's DPO loss: it needs "
                                  "dpo.logprobs: selected")
            fix.check(section, key, t, cfg)


def _coerce_options(section, key: str):
    known = {name: (fix, option) for fix in registered() for name, option in fix.options.items()}
    options = {}
    for name, value in section.options.items():
        if name not in known:
            core = [f.name for f in dataclasses.fields(section) if not f.metadata.get("rest")]
            raise ConfigError(f"{key}.{name}: unknown key (known: {', '.join(sorted(core + list(known)))})")
        value = coerce(value, known[name][1].type, f"{key}.{name}")
        if value != known[name][1].default:
            options[name] = value
    section.options = options


# ---------------------------------------------------------------- candidates to pairs

def preference_pairs(step: Step, records: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """The pairs of an iteration's candidates under the fixes `step.section` switches on: each fix prepares a
    copy of the records, the pairs follow their rule (`pairs_from`), and the fixes add pairs of their own.
    Returns (answer pairs, the fixes' own pairs, the records as the fixes prepared them)."""
    fixes = on(step.section)
    prepared = copy.deepcopy(records)
    for fix in fixes:
        fix.prepare(step, prepared)
    return pairs_from(prepared, step.section), [p for fix in fixes for p in fix.more_pairs(step, prepared)], prepared


def pairs_from(records: list[dict], section) -> list[dict]:
    """One pair per prompt from its usable candidates (records as the fixes prepared them): chosen and rejected
    by the fix on that picks them, else the paper's highest- and lowest-scored; what each fix adds to a pair."""
    fixes = on(section)
    chooser = next((f for f in fixes if f.chooses), None)
    found = []
    for record in records:
        scored = [c for c in record["candidates"] if usable(c)]
        picked = chooser.choose(scored, record, section) if chooser else best_and_worst(scored)
        made = picked and pair(record["prompt"], *picked)
        if not made:
            continue
        for fix in fixes:
            fix.annotate(made, scored, section)
        found.append(made)
    return found


def no_pair_reason(records: list[dict], section, max_new_tokens: int) -> str:
    """Why `preference_pairs` found none, in one line, with what a fix on adds to it."""
    why = f"no usable preference pair from {len(records)} prompts"
    more = [text for fix in on(section) if (text := fix.no_pair_reason(records, section, max_new_tokens))]
    return why + "".join(f" ({text})" for text in more)


def describe(section, t: int) -> str:
    """A variant in words: its fixes beside the paper's recipe, and where it starts."""
    changed = [fix.describe(section) for fix in on(section)]
    return (f"One self-rewarding iteration from M{t}, on the prompts, candidates and judgments of AIFT(M{t}) (those the "
            f"paper's recipe used for M{t + 1}), with: " + ("; ".join(changed) or "the paper's recipe") +
            f". Its model is compared with M{t + 1} in the ablation chapter.")
