"""Shared by the Python parts of test/sh/ops-*.sh: PASS:/FAIL: lines and a few
readers of ops/ files. Import with sys.path.insert(0, "test/sh/ops-lib")."""
import re
import sys

failed = False


def res(good, name, *detail):
    """Prints PASS: or FAIL: NAME; on failure the detail lines under it."""
    global failed
    print(("PASS: " if good else "FAIL: ") + name)
    for d in detail if not good else ():
        print("    " + str(d))
    if not good:
        failed = True


def done():
    sys.exit(1 if failed else 0)


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def known_metrics(root):
    """{name: type} from ops/prometheus/metrics.txt."""
    out = {}
    for line in open(root + "/ops/prometheus/metrics.txt"):
        if line.strip() and not line.startswith("#"):
            f = line.split()
            out[f[0]] = f[1]
    return out
