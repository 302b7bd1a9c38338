"""Which CSRF token gateway/web/static/webauthn.js sends (run under Node.js with a stand-in page): the
one gateway/web/static/csrf.js reads, shared with choices.js.

An attack run: the script took the first cookie matching ``(__Host-)?gateway_csrf``, so a plain
``gateway_csrf`` cookie with ``Path=/.gateway`` that an app on the same host set (listed first by the
browser) was sent instead of the ``__Host-`` one the server checks, and every passkey call got 403.
The script now sends the token the server rendered into the page's forms, and without a form on the
page, the ``__Host-`` cookie when there is one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[3] / "gateway" / "web" / "static"
# As base.html loads them: the shared CSRF reader first, then the script that calls it.
SCRIPTS = (STATIC / "csrf.js", STATIC / "webauthn.js")

# A page with one passkey button: clicking it makes the script post to the API; the stand-in fetch
# prints the x-csrftoken header it was given.
PAGE = """
const fs = require("fs");
const [source, cookie, field] = [fs.readFileSync(process.argv[2], "utf8"), process.argv[3], JSON.parse(process.argv[4])];
let click = null;
globalThis.window = { PublicKeyCredential: function () {}, location: { assign() {} } };
globalThis.document = {
  cookie,
  querySelector(selector) {
    return selector === 'input[name="_csrf_token"]' && field !== null ? { value: field } : null;
  },
  addEventListener(type, listener) { if (type === "click") click = listener; },
};
globalThis.fetch = async (url, init) => {
  process.stdout.write(JSON.stringify(init.headers["x-csrftoken"]));
  process.exit(0);
};
new Function(source)();
const button = { dataset: { webauthn: "passwordless", rd: "" } };
click({ target: { closest: () => button }, preventDefault() {} });
setTimeout(() => { process.stderr.write("no request was made"); process.exit(1); }, 2000);
"""


def sent_token(tmp_path: Path, cookie: str, field: str | None) -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is missing: scripts/ensure-test-deps installs it")
    page = tmp_path / "page.js"
    page.write_text(PAGE)
    scripts = tmp_path / "scripts.js"
    scripts.write_text("\n".join(script.read_text() for script in SCRIPTS))
    done = subprocess.run(
        [node, str(page), str(scripts), cookie, json.dumps(field)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    token: str = json.loads(done.stdout)
    return token


@pytest.mark.peer
@pytest.mark.parametrize(
    ("cookie", "field", "expected"),
    [
        # The page's own token first, whatever cookies another app planted.
        ("gateway_csrf=planted; __Host-gateway_csrf=real", "real", "real"),
        ("gateway_csrf=planted", "rendered", "rendered"),
        # No form on the page: the __Host- cookie wins over a plain one listed before it.
        ("gateway_csrf=planted; __Host-gateway_csrf=real", None, "real"),
        ("other=1; __Host-gateway_csrf=real%3D; gateway_csrf=planted", None, "real="),
        # Plain HTTP (insecure cookies): only the plain name exists.
        ("x__Host-gateway_csrf=no; gateway_csrf=plain", None, "plain"),
        ("", None, ""),
    ],
)
def test_the_script_sends_the_token_the_server_checks(
    tmp_path: Path, cookie: str, field: str | None, expected: str
) -> None:
    assert sent_token(tmp_path, cookie, field) == expected
