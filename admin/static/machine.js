// The Machine clients page's result renderer (see console.js for how forms reach the API).
//
//   tokenIssued  the answer to POST /api/tokens: the token, shown once, with a copy button; the lists
//                show its id from the next reload on.
"use strict";

(function () {
  const renderers = (window.consoleRender = window.consoleRender || {});

  function el(tag, cls, value) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (value !== undefined) node.textContent = value;
    return node;
  }

  renderers.tokenIssued = (data, box) => {
    const details = data.details;
    box.append(
      el("p", "alert ok", `Token ${details.id} for ${details.account}, valid until ${details.expires_at.slice(0, 16).replace("T", " ")} UTC.`),
      el("p", "alert", "Copy it now: it is not shown again. Store it where the job reads its secrets."),
    );
    const row = window.consoleSecretRow("issued-token", data.token);
    const done = el("button", "secondary", "Done: show it in the list");
    done.type = "button";
    done.addEventListener("click", () => window.location.reload());
    box.append(row, done);
  };
})();
