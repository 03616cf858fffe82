"""`meson install`, and the installed binary with no source tree to fall back on.

A packager's run, once for the whole module: the source tree is copied
(without build directories, databases or git data) into a temporary
directory, configured with a prefix that is the final location, built
(the `dunning` target only) and installed into a staging directory with
`meson install --destdir`. The staged tree is then moved to the prefix, as
a package manager unpacks a package, and the copied source tree and its
build directory are deleted: the paths the binary was compiled with for
running uninstalled no longer exist, so everything the installed binary
reads comes from the installed files.

Then: every file the packaging promises is installed where a packager
expects it; the demo runs from the installed binary in an unrelated working
directory with no DUNNING_* variable set; an edit of an installed template
shows in `dunning email preview` (and $DUNNING_TEMPLATES still wins); the
example configuration, set up as docs/operations.md says, passes `dunning
config check`; the systemd unit is hardened, starts the installed binary
with the configuration under sysconfdir, does not restart on exit 78, and
passes `systemd-analyze verify` where systemd-analyze exists.

This builds the project once more (about a minute on two cores); it never
touches ./build or the repository.
"""

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE_KINDS = sorted(p.name for p in (REPO / "templates").glob("*.txt"))

# Never copied into the packager's source tree.
SKIP_NAMES = {".git", "node_modules", "__pycache__", ".pytest_cache", "test-artifacts"}
SKIP_SUFFIXES = (".db", ".db-wal", ".db-shm")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUNNING_", "STRIPE_"))}
    env["TZ"] = "UTC"
    env.update(extra)
    return env


def run(args, **kw):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                       env=kw.pop("env", clean_env()), **kw)
    assert r.returncode == 0, "%s: exit %d\n%s\n%s" % (args, r.returncode, r.stdout, r.stderr)
    return r


def skip_in_copy(directory, names):
    """shutil.copytree's ignore: git data, dependencies, caches, databases,
    and build directories (any directory Meson configured)."""
    return [n for n in names
            if n in SKIP_NAMES or n.endswith(SKIP_SUFFIXES)
            or os.path.isdir(os.path.join(directory, n, "meson-private"))]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    for tool in ("meson", "ninja"):
        if shutil.which(tool) is None:
            pytest.skip("%s is not installed" % tool)
    base = tmp_path_factory.mktemp("install")
    src, build, stage, prefix = base / "src", base / "build", base / "stage", base / "inst"
    shutil.copytree(REPO, src, ignore=skip_in_copy, symlinks=True)
    run(["meson", "setup", build, src, "--prefix", prefix, "--buildtype=debugoptimized"])
    run(["ninja", "-C", build, "dunning"])
    run(["meson", "install", "-C", build, "--no-rebuild", "--destdir", stage])

    # Everything staged lies under the prefix; nothing escaped to the system.
    staged_root = stage / prefix.relative_to("/")
    staged = sorted(p for p in stage.rglob("*") if p.is_file())
    assert staged and all(staged_root in p.parents for p in staged), staged
    files = sorted(str(p.relative_to(staged_root)) for p in staged)

    # The package manager's step, then the source tree out of reach.
    shutil.move(str(staged_root), str(prefix))
    shutil.rmtree(src)
    shutil.rmtree(build)
    workdir = base / "work"
    workdir.mkdir()
    return SimpleNamespace(base=base, prefix=prefix, src=src, build=build, files=files,
                           binary=prefix / "bin" / "dunning",
                           data=prefix / "share" / "dunning", workdir=workdir)


def dunning(inst, *args, env=None, cwd=None):
    return subprocess.run([str(inst.binary)] + [str(a) for a in args], capture_output=True,
                          text=True, env=env or clean_env(), cwd=str(cwd or inst.workdir))


def test_every_file_is_installed_where_a_packager_expects_it(installed):
    expected = {"bin/dunning",
                "share/dunning/policy/default.conf",
                "share/dunning/dunning.ini.example",
                "lib/systemd/system/dunning.service",
                "lib/sysusers.d/dunning.conf"}
    expected |= {"share/dunning/templates/" + k for k in TEMPLATE_KINDS}
    assert set(installed.files) == expected
    assert os.access(installed.binary, os.X_OK)
    for k in TEMPLATE_KINDS:
        assert (installed.data / "templates" / k).read_text() == \
            (REPO / "templates" / k).read_text()
    assert (installed.data / "policy" / "default.conf").read_text() == \
        (REPO / "policy" / "default.conf").read_text()
    sysusers = (installed.prefix / "lib" / "sysusers.d" / "dunning.conf").read_text()
    assert any(line.split()[:2] == ["u", "dunning"] for line in sysusers.splitlines())
    assert not installed.src.exists() and not installed.build.exists()


def test_installed_binary_runs_the_demo_without_the_source_tree(installed):
    r = dunning(installed, "--help")
    assert r.returncode == 0
    assert str(installed.data / "templates") in r.stdout
    assert str(installed.data / "policy" / "default.conf") in r.stdout
    assert str(installed.src) not in r.stdout
    r = dunning(installed, "demo", "--accounts", "120", "--days", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "drift scan: 120 accounts, 0 drifting" in r.stdout
    assert "OK: no drift" in r.stdout
    assert (installed.workdir / "dunning-demo.db").exists()


def test_installed_templates_are_the_ones_read(installed, tmp_path):
    r = dunning(installed, "demo", "--accounts", "10", "--days", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    db = tmp_path / "dunning-demo.db"
    with sqlite3.connect(str(db)) as c:
        acct = c.execute("SELECT id FROM accounts ORDER BY id LIMIT 1").fetchone()[0]

    def subject(env=None):
        r = dunning(installed, "--db", db, "email", "preview", "resolved", acct, env=env,
                    cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        return [line for line in r.stdout.splitlines() if line.startswith("Subject: ")][0]

    shipped = (REPO / "templates" / "resolved.txt").read_text()
    assert "Subject: " in shipped
    before = subject()
    installed_template = installed.data / "templates" / "resolved.txt"
    installed_template.write_text(shipped.replace("Subject: ", "Subject: [installed copy] ", 1))
    try:
        assert subject() == before.replace("Subject: ", "Subject: [installed copy] ", 1)
        # $DUNNING_TEMPLATES still wins over the installed directory.
        own = tmp_path / "own-templates"
        shutil.copytree(installed.data / "templates", own)
        (own / "resolved.txt").write_text(shipped.replace("Subject: ", "Subject: [own] ", 1))
        assert subject(clean_env(DUNNING_TEMPLATES=str(own))).startswith("Subject: [own] ")
    finally:
        installed_template.write_text(shipped)
    assert subject() == before
    # Without the installed templates the error names the installed path.
    hidden = installed.data / "templates.hidden"
    (installed.data / "templates").rename(hidden)
    try:
        r = dunning(installed, "--db", db, "email", "preview", "resolved", acct, cwd=tmp_path)
        assert r.returncode != 0
        assert str(installed.data / "templates") in r.stderr
    finally:
        hidden.rename(installed.data / "templates")


def test_the_example_configuration_passes_config_check(installed, tmp_path):
    """The steps of docs/operations.md (Install): the example becomes
    sysconfdir/dunning/dunning.ini, the default policy sysconfdir/dunning/
    policy.conf; the state directory is stood in for by a temporary one."""
    etc = installed.prefix / "etc" / "dunning"
    etc.mkdir(parents=True)
    try:
        example = (installed.data / "dunning.ini.example").read_text()
        assert "file = %s" % (etc / "policy.conf") in example
        state = tmp_path / "state"
        state.mkdir()
        (etc / "dunning.ini").write_text(example.replace("/var/lib/dunning/", str(state) + "/"))
        shutil.copy(installed.data / "policy" / "default.conf", etc / "policy.conf")
        env = clean_env(STRIPE_API_KEY="sk_test_install", STRIPE_WEBHOOK_SECRETS="whsec_install",
                        DUNNING_ADMIN_TOKEN="install-test-token")
        r = dunning(installed, "config", "check", etc / "dunning.ini", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "%s: ok" % (etc / "dunning.ini") in r.stdout
        assert "policy      %s" % (etc / "policy.conf") in r.stdout
        assert "provider    stripe" in r.stdout
        # Without the policy copy the check stops, exit 78, naming it.
        (etc / "policy.conf").unlink()
        r = dunning(installed, "config", "check", etc / "dunning.ini", env=env)
        assert r.returncode == 78 and "policy.conf" in r.stderr
    finally:
        shutil.rmtree(installed.prefix / "etc")


def unit_settings(text):
    """[section] -> key -> list of values, in order (systemd keys may repeat)."""
    out, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key, []).append(value)
    return out


def test_the_systemd_unit_is_hardened_and_verifies(installed):
    unit = installed.prefix / "lib" / "systemd" / "system" / "dunning.service"
    s = unit_settings(unit.read_text())["Service"]
    one = {k: v[-1] for k, v in s.items()}
    assert one["ExecStart"] == "%s serve --config %s" % (
        installed.binary, installed.prefix / "etc" / "dunning" / "dunning.ini")
    assert one["User"] == "dunning"
    assert one["StateDirectory"] == "dunning"
    assert one["Restart"] == "on-failure"
    assert "78" in one["RestartPreventExitStatus"].split()
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("PrivateDevices", "yes"), ("CapabilityBoundingSet", ""),
                       ("RestrictSUIDSGID", "yes"), ("MemoryDenyWriteExecute", "yes")]:
        assert one[key] == value, key
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "@system-service" in s["SystemCallFilter"]
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax is not verified")
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, text=True, env=clean_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dunning.service" not in r.stderr, r.stderr
