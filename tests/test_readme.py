import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ci_runs_the_readme_test_command():
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    m = re.search(r"^TEST_CMD='(.+)'$", ci, flags=re.M)
    assert m, ".ci/run must define TEST_CMD"
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert m.group(1) in readme, "README.md must show the exact test command that .ci/run executes"
    assert 'bash -c "$TEST_CMD"' in ci


def test_no_top_level_kernels_module():
    import sys

    import sbgan_fast  # noqa: F401
    import sbgan_fast.cli  # noqa: F401
    import sbgan_fast.kernels  # noqa: F401
    import sbgan_fast.ops  # noqa: F401
    import sbgan_fast.train.trainer  # noqa: F401
    assert "kernels" not in sys.modules
