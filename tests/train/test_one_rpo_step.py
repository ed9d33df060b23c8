"""One RPO step for both trainers: rpo-train and RPOTrainer plan, update, initialise and probe through the same
functions, and no other module of rpo_train re-implements those rules."""

from __future__ import annotations

import ast
from pathlib import Path

import rpo_train

PACKAGE = Path(rpo_train.__file__).parent

# the rule -> the one module allowed to call its primitive directly
RULES = {
    "cut": ("plan.py",),                       # TruncationConfig.cut: the prefix of a plan
    "refresh_reason": ("plan.py",),            # the refresh decision
    "update_from_group": ("plan.py",),         # the epsilon-greedy cache update
    "suffix_budget": ("plan.py",),             # the suffix budget rule
    "length_aware": ("groups.py", "integrations/trl_rewards.py"),  # rpo-train shapes, TRL adds a component
}


def calls(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return names


def test_each_rule_is_called_from_its_one_place():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        found = calls(path)
        for rule, homes in RULES.items():
            if rule in found:
                assert rel in homes, f"{rel} calls {rule}(): the rule lives in {homes}"


def test_both_trainers_use_the_same_plan_update_init_and_probe():
    from rpo_train import cache_init, drift, groups, plan, trainer
    from rpo_train.integrations import trl_init, trl_rows
    from rpo_train.model import policy

    assert groups.plan_group is plan.plan_group is trl_rows.plan_group
    assert trainer.update_group is plan.update_group is trl_rows.update_group
    assert trl_init.store is cache_init.store and trl_init.init_mode is cache_init.init_mode
    assert groups.measure is drift.measure
    trl_source = (PACKAGE / "integrations" / "trl.py").read_text()
    assert "measure(" in trl_source and "response_logprobs(" in trl_source  # the probe: rpo-train's two functions
    assert trainer.response_logprobs is policy.response_logprobs
