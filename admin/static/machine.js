// The Machine clients page's result renderer (see console.js for how forms reach the API).
//
//   tokenIssued  the answer to POST /api/tokens: the token, shown once, with a copy button; the lists
//                show its id from the next reload on.
"use strict";

(function () {
  const renderers = (window.consoleRender = window.consoleRender || {});

  const el = window.consoleEl; // (tag, text, cls): console.js

  renderers.tokenIssued = (data, box) => {
    const details = data.details;
    box.append(
      el("p", `Token ${details.id} for ${details.account}, valid until ${details.expires_at.slice(0, 16).replace("T", " ")} UTC.`, "alert ok"),
      el("p", "Copy it now: it is not shown again. Store it where the job reads its secrets.", "alert"),
    );
    const row = window.consoleSecretRow("issued-token", data.token);
    const done = el("button", "Done: show it in the list", "secondary");
    done.type = "button";
    done.addEventListener("click", () => window.location.reload());
    box.append(row, done);
  };
})();
