"""``scripts/mutation_checks.py`` keeps pointing at real code and real tests (running it is minutes)."""

from __future__ import annotations

import importlib.util
import sys

from oel_testing import REPO_ROOT


def _mutations():
    script = REPO_ROOT / "scripts" / "mutation_checks.py"
    spec = importlib.util.spec_from_file_location("mutation_checks", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.MUTATIONS


def test_each_check_breaks_code_that_exists_once_and_names_existing_tests():
    mutations = _mutations()
    assert len({m.name for m in mutations}) == len(mutations)
    for mutation in mutations:
        assert (REPO_ROOT / mutation.path).read_text().count(mutation.old) == 1, mutation.name
        for test in mutation.tests:
            path, _, name = test.partition("::")
            name = name.partition("[")[0]  # a parametrized test's id names its function first
            source = (REPO_ROOT / path).read_text()
            assert not name or f"def {name}(" in source, (mutation.name, test)
