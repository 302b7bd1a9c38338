"""``gateway policy …`` as an operator runs it: real subprocesses, a temporary SQLite config.

What a terminal shows is what is checked: exit codes (0 ok, 1 findings or failures, 2 user errors),
stdout, stderr, and never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.harness import ROOT, run_cli
from tests.integration.harness import run_cli_checked as gateway

ACTIONS = ["validate", "test", "explain", "diff", "import", "export", "history", "restore"]

POLICY = """\
# who may do what
p, admin, *, /*, *, allow
p, authenticated, app, /public/*, GET|HEAD, allow
p, staff, app, /wiki/*, GET, allow
p, user:mallory, app, /*, *, deny
g, group:corp:ops, admin
g, user:bob, staff
"""
CHANGED = """\
p, admin, *, /*, *, allow
p, authenticated, app, /public/*, GET|HEAD, allow
p, staff, app, /wiki/*, GET|POST, allow
p, user:mallory, app, /*, *, deny
g, group:corp:ops, admin
g, user:bob, staff
g, user:carol, staff
"""
MALFORMED = """\
p, admin, *, /*, *, allow

p, staff, app, /wiki/*, GET, allow # wiki
"""
# '*' inside a segment is a regex repeat to keyMatch2: validate() reports it as an error.
INVALID = """\
p, user:root, *, /files*, GET, allow
"""
CASES = """\
cases:
  - name: ops are admins
    principals: [user:olga, group:corp:ops, authenticated]
    route: app
    method: DELETE
    path: /anything
    expect: allow
  - principals: user:bob authenticated
    route: app
    method: GET
    path: /wiki/../wiki/Home
    expect: allow
    reason: policy-allow
  - principals: user:mallory, group:corp:ops
    route: app
    method: GET
    path: /public/x
    expect: deny
    reason: policy-deny
  - principals: [authenticated]
    route: app
    method: GET
    path: /public/%2e%2e%2fadmin
    expect: deny
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listen: 127.0.0.1:8080\n"
        "public_url: http://127.0.0.1:8080\n"
        f"data_dir: {tmp_path / 'data'}\n"
        "routes:\n"
        "  - {name: app, host: 127.0.0.1, upstreams: ['http://127.0.0.1:9000'], mfa: none}\n"
    )
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    made = {}
    for name, text in {
        "policy": POLICY,
        "changed": CHANGED,
        "malformed": MALFORMED,
        "invalid": INVALID,
        "cases": CASES,
    }.items():
        path = tmp_path / (f"{name}.yaml" if name == "cases" else f"{name}.csv")
        path.write_text(text)
        made[name] = path
    return made


# -- help ------------------------------------------------------------------------------------------------


def test_every_action_has_help() -> None:
    proc = gateway("policy", "--help")
    assert proc.returncode == 0
    for action in ACTIONS:
        assert action in proc.stdout
    for action in ACTIONS:
        proc = gateway("policy", action, "--help")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"usage: gateway policy {action}")


def test_policy_without_action_prints_usage() -> None:
    proc = gateway("policy")
    assert proc.returncode == 2
    assert "usage: gateway policy" in proc.stderr


# -- offline: validate, test, explain --file, diff A B ---------------------------------------------------


def test_validate(files: dict[str, Path], tmp_path: Path) -> None:
    proc = gateway("policy", "validate", str(files["policy"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("OK")

    proc = gateway("policy", "validate", str(files["malformed"]))
    assert proc.returncode == 1
    assert f"{files['malformed']}:3: error: effect must be 'allow' or 'deny'" in proc.stdout
    assert "comments go on their own line" in proc.stdout

    proc = gateway("policy", "validate", str(files["invalid"]))
    assert proc.returncode == 1
    assert f"{files['invalid']}:1" in proc.stdout
    assert "1 error" in proc.stdout

    proc = gateway("policy", "validate", str(tmp_path / "missing.csv"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert "no such policy file" in proc.stderr


# Each line looks like "the admin area" (or was written when "/x/*" left "/x" out) and is not quite.
SURPRISES = """\
p, authenticated, app, /*, *, allow
p, dev, app, /admin*, *, deny
p, dev, app, /settings/.*, *, deny
p, dev, app, /billing/, *, deny
p, dev, app, /export, *, deny
p, dev, app, /me, GET, allow
p, dev, app, /me/*, GET|POST, allow
g, user:dave, dev
"""


def test_validate_explains_where_a_path_pattern_could_surprise(tmp_path: Path) -> None:
    policy = tmp_path / "surprises.csv"
    policy.write_text(SURPRISES)
    proc = gateway("policy", "validate", str(policy))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = {
        line.split(" [", 1)[1].split("]", 1)[0]: line for line in proc.stdout.splitlines() if " [" in line
    }
    assert found["star-mid-segment"].startswith(f"{policy}:2: error ")
    assert "write '/admin/*' for '/admin' and everything below it" in found["star-mid-segment"]
    assert found["regex-subtree"].startswith(f"{policy}:3: error ")
    assert "not '/settings' itself" in found["regex-subtree"]
    assert found["trailing-slash"].startswith(f"{policy}:4: warning ")
    assert found["deny-exact-path"].startswith(f"{policy}:5: warning ")
    assert "write '/export/*' to deny '/export' and everything below it" in found["deny-exact-path"]
    assert found["subtree-covers-root"].startswith(f"{policy}:7: warning ")
    assert "allows GET|POST on '/me' too, more than the GET of line 6" in found["subtree-covers-root"]
    assert proc.stdout.strip().endswith("2 errors, 3 warnings")


def test_explain_names_the_subtree_deny_for_the_areas_own_path(tmp_path: Path) -> None:
    policy = tmp_path / "policy.csv"
    policy.write_text(
        "p, authenticated, app, /*, *, allow\np, dev, app, /admin/*, *, deny\ng, user:dave, dev\n"
    )
    common = (
        "policy",
        "explain",
        "--file",
        str(policy),
        "-p",
        "user:dave",
        "-p",
        "authenticated",
        "--route",
        "app",
        "--method",
        "GET",
    )
    proc = gateway(*common, "--path", "/%61dmin")
    assert proc.returncode == 0, proc.stderr
    assert "GET /admin (canonical form of /%61dmin)" in proc.stdout
    assert "denied [policy-deny] by rule (line 2) 'p, dev, app, /admin/*, *, deny' for dev" in proc.stdout
    proc = gateway(*common, "--path", "/administrator")
    assert "allowed [policy-allow] by rule (line 1)" in proc.stdout


def test_the_shipped_policy_passes_its_tests() -> None:
    proc = gateway("policy", "test", "policies/policy.csv", "--cases", "policies/tests.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert "0 failed" in summary
    assert int(summary.split()[0]) >= 20
    assert gateway("policy", "validate", "policies/policy.csv").returncode == 0


def test_test_reports_failures_with_the_explanation(files: dict[str, Path], tmp_path: Path) -> None:
    proc = gateway("policy", "test", str(files["policy"]), "--cases", str(files["cases"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == f"4 cases: 4 passed, 0 failed ({files['cases']} against {files['policy']})"

    failing = tmp_path / "failing.csv"
    failing.write_text(
        "principals,route,method,path,expect,reason\n"
        "user:bob authenticated,app,POST,/wiki/Home,allow,\n"
        "user:bob,app,GET,/wiki/Home,allow,policy-allow\n"
        '"user:mallory,staff",app,GET,/wiki/x,allow,\n'
    )
    proc = gateway("policy", "test", str(files["policy"]), "--cases", str(failing))
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["CASE", "PRINCIPALS", "REQUEST", "EXPECTED", "GOT", "WHY"]
    assert f"{failing}:2" in lines[1]
    assert "no rule matches (default deny)" in lines[1]
    assert f"{failing}:4" in lines[2]
    assert "deny [policy-deny]" in lines[2]
    assert "'p, user:mallory, app, /*, *, deny'" in lines[2]
    assert lines[-1] == f"3 cases: 1 passed, 2 failed ({failing} against {files['policy']})"


def test_a_malformed_cases_file_names_the_line(files: dict[str, Path], tmp_path: Path) -> None:
    cases = tmp_path / "bad.yaml"
    cases.write_text(
        "- {principals: [admin], route: app, method: GET, path: /, expect: allow}\n"
        "- {principals: [admin], route: app, method: GET, path: /, expect: maybe}\n"
    )
    proc = gateway("policy", "test", str(files["policy"]), "--cases", str(cases))
    assert proc.returncode == 2
    assert f"{cases}:2 (case 2): 'expect' must be allow or deny" in proc.stderr

    proc = gateway("policy", "test", str(files["malformed"]), "--cases", str(files["cases"]))
    assert proc.returncode == 2
    assert f"{files['malformed']}:3:" in proc.stderr


def test_explain_a_file(files: dict[str, Path]) -> None:
    proc = gateway(
        "policy", "explain", "--file", str(files["policy"]),
        "--principal", "user:bob", "--principal", "authenticated",
        "--route", "app", "--method", "GET", "--path", "/public/../wiki/%48ome",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "GET /wiki/Home (canonical form of /public/../wiki/%48ome) on route 'app'" in proc.stdout
    assert "principal:  user:bob (roles: staff)" in proc.stdout
    assert "allowed [policy-allow] by rule (line 4) 'p, staff, app, /wiki/*, GET, allow' for staff" in (
        proc.stdout
    )

    proc = gateway(
        "policy", "explain", "--file", str(files["policy"]), "-p", "authenticated",
        "--route", "app", "--method", "GET", "--path", "/public/%2fetc",
    )  # fmt: skip
    assert proc.returncode == 0
    assert "the gateway refuses this path with 400" in proc.stdout


def test_diff_two_files(files: dict[str, Path]) -> None:
    proc = gateway("policy", "diff", str(files["policy"]), str(files["policy"]))
    assert proc.returncode == 0
    assert "no difference" in proc.stdout
    proc = gateway("policy", "diff", str(files["policy"]), str(files["changed"]))
    assert proc.returncode == 1
    assert "-p, staff, app, /wiki/*, GET, allow\n+p, staff, app, /wiki/*, GET|POST, allow\n" in proc.stdout
    assert "+g, user:carol, staff" in proc.stdout


# -- the stored policy -----------------------------------------------------------------------------------


def test_import_export_history_diff_restore_explain(
    config: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    c = ("--config", str(config))
    proc = gateway("policy", "history", *c)
    assert (proc.returncode, proc.stdout.strip()) == (0, "no policy stored yet")

    proc = gateway("policy", "import", str(files["policy"]), *c, "--reason", "first")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"imported {files['policy']} as version 1 (+6 -0, 6 lines)"
    # The embedded default shares its broadcast with the running gateways: nothing to warn about.
    assert "polling" not in proc.stderr

    proc = gateway("policy", "import", str(files["policy"]), *c, "--reason", "again")
    assert proc.returncode == 0
    assert "same as the stored policy; version 1 stays current" in proc.stdout

    proc = gateway("policy", "diff", str(files["changed"]), *c)
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"--- stored version 1\n+++ {files['changed']}\n")

    proc = gateway("policy", "import", str(files["changed"]), *c, "--reason", "wiki edits, carol")
    assert proc.returncode == 0, proc.stderr
    assert "as version 2 (+2 -1, 7 lines)" in proc.stdout
    assert gateway("policy", "diff", str(files["changed"]), *c).returncode == 0

    proc = gateway("policy", "export", *c)
    assert proc.returncode == 0
    assert proc.stdout == Path(files["changed"]).read_text()
    out = tmp_path / "v1.csv"
    proc = gateway("policy", "export", *c, "--version", "1", "-o", str(out))
    assert proc.returncode == 0
    assert "wrote version 1" in proc.stderr
    assert out.read_text() == POLICY.split("\n", 1)[1]  # the stored text has no comments

    proc = gateway(
        "policy", "explain", *c, "-p", "user:carol", "-r", "app", "-m", "POST", "--path", "/wiki/x"
    )
    assert proc.returncode == 0, proc.stderr
    assert "allowed [policy-allow]" in proc.stdout
    assert "policy version 2" in proc.stdout

    proc = gateway("policy", "restore", "1", *c, "--reason", "roll back")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "restored version 1 as version 3 (+1 -2)"

    proc = gateway("policy", "history", *c)
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["VERSION", "CREATED", "ACTOR", "CHANGE", "LINES", "REASON"]
    assert lines[1].split()[0] == "3"
    assert "roll back (restored from 1)" in lines[1]
    assert "+1 -2" in lines[1]
    assert "cli:" in lines[1]
    assert lines[2].split()[0] == "2"
    assert "wiki edits, carol" in lines[2]
    assert lines[3].split()[0] == "1"
    assert "+6 -0" in lines[3]

    proc = gateway(
        "policy", "explain", *c, "-p", "user:carol", "-r", "app", "-m", "POST", "--path", "/wiki/x"
    )
    assert "denied [no-matching-rule]" in proc.stdout
    assert "policy version 3" in proc.stdout


def test_stored_policy_user_errors(config: Path, files: dict[str, Path]) -> None:
    c = ("--config", str(config))
    proc = gateway("policy", "import", str(files["malformed"]), *c, "--reason", "x")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {files['malformed']}:3: effect must be")

    proc = gateway("policy", "import", str(files["invalid"]), *c, "--reason", "x")
    assert proc.returncode == 1
    assert "nothing was stored (--force stores it anyway)" in proc.stderr
    assert f"{files['invalid']}:1" in proc.stderr
    assert gateway("policy", "history", *c).stdout.strip() == "no policy stored yet"

    proc = gateway("policy", "import", str(files["invalid"]), *c, "--reason", "x", "--force")
    assert proc.returncode == 0, proc.stderr

    # An empty file (a truncated export, a wrong path's template) would deny every request.
    empty = files["policy"].with_name("empty.csv")
    empty.write_text("# the header of an export, and nothing else\n")
    proc = gateway("policy", "import", str(empty), *c, "--reason", "x")
    assert proc.returncode == 1
    assert "[allows-nothing] the policy has no allow rule" in proc.stderr
    assert len(gateway("policy", "history", *c).stdout.strip().splitlines()) == 2  # header + version 1

    proc = gateway("policy", "restore", "7", *c, "--reason", "x")
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: there is no policy version 7")
    proc = gateway("policy", "export", *c, "--version", "7")
    assert proc.returncode == 2

    proc = gateway("policy", "restore", "0", *c, "--reason", "x")
    assert proc.returncode == 2
    assert "versions start at 1" in proc.stderr
    proc = gateway("policy", "import", str(files["policy"]), *c)
    assert proc.returncode == 2
    assert "--reason" in proc.stderr

    proc = gateway("policy", "history", "--config", str(config.parent / "nope.yaml"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:")


def test_a_role_no_rule_names_is_noted(config: Path, files: dict[str, Path]) -> None:
    """``service-account create --role`` stores the roles as given, and notes on stderr (exit 0) each one
    that no rule names, directly or through a ``g`` line: a typo grants nothing, silently otherwise."""
    c = ("--config", str(config))
    assert gateway("policy", "import", str(files["policy"]), *c, "--reason", "first").returncode == 0
    proc = gateway("service-account", "create", "ci", "--role", "staff", "--role", "staf", *c)
    assert proc.returncode == 0, proc.stderr
    assert "roles: staff, staf" in proc.stdout
    assert "no policy rule names the role 'staf'" in proc.stderr
    assert "'staff'" not in proc.stderr
    assert proc.stderr.count("note:") == 1
    # A role that reaches a rule through the policy's role links is named too: no note.
    linked = files["policy"].with_name("linked.csv")
    linked.write_text(POLICY + "g, deployers, staff\n")
    assert gateway("policy", "import", str(linked), *c, "--reason", "deployers").returncode == 0
    proc = gateway("service-account", "create", "deploy", "--role", "deployers", *c)
    assert proc.returncode == 0, proc.stderr
    assert "note:" not in proc.stderr
    # A person's roles the same way.
    proc = gateway("user", "add", "pat", "--no-password", "--role", "deployers", "--role", "admn", *c)
    assert proc.returncode == 0, proc.stderr
    assert "no policy rule names the role 'admn'" in proc.stderr
    assert "'deployers'" not in proc.stderr


def test_running_from_another_directory(files: dict[str, Path], tmp_path: Path) -> None:
    # Paths are the operator's, relative to where the command runs.
    proc = run_cli("policy", "validate", files["policy"].name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ROOT.exists()
