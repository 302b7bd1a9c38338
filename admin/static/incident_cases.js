// The incident record page's renderers: the recovery checklist (GET /api/incident-cases/{id}/checks,
// and the checks a refused close answers with), and a notification round (previews or deliveries).
// Also keeps the send form's hidden template and text equal to what the preview form shows.
"use strict";

(function () {
  const renderers = (window.consoleRender = window.consoleRender || {});

  const el = window.consoleEl; // (tag, text, cls): console.js

  renderers.checks = (data, box) => {
    const checks = (data && data.checks) || [];
    if (!checks.length) return;
    if (data.passed !== undefined) {
      box.append(
        el(
          "p",
          data.passed ? "Every check passes: the record may close." : "A check fails: the record cannot close yet.",
          data.passed ? "alert ok" : "alert",
        ),
      );
    }
    const list = el("ul", undefined, "status checklist");
    for (const check of checks) {
      const item = el("li", undefined, check.passed ? "passed" : "failed");
      item.dataset.check = check.name;
      item.append(
        el("span", check.passed ? "ok" : "failed", check.passed ? "badge ok" : "badge bad"),
        " ",
        el("code", check.name),
        " ",
        el("span", check.detail, "detail"),
      );
      list.append(item);
    }
    box.append(list);
  };

  renderers.notify = (data, box) => {
    // A send is bound to the preview just read: the server refuses it if the messages changed since.
    const bound = document.getElementById("notify-previewed");
    if (bound && data.previewed) bound.value = data.digest;
    box.append(el("p", data.message, "alert ok"));
    for (const shown of data.previews || []) {
      const article = el("article", undefined, "mail-preview");
      article.append(el("p", "To: " + shown.to, "mono"), el("p", "Subject: " + shown.subject, "mono"));
      article.append(el("pre", shown.body, "code"));
      box.append(article);
    }
    const lines = [];
    for (const d of data.deliveries || []) lines.push(`${d.username} <${d.address}>: ${d.sent ? "sent" : "NOT SENT"} ${d.detail}`);
    for (const u of data.without_address || []) lines.push(`${u}: no email address on the account`);
    for (const u of data.missing || []) lines.push(`${u}: no such account`);
    if (lines.length) box.append(el("pre", lines.join("\n"), "code deliveries"));
  };

  function mirror() {
    for (const hidden of document.querySelectorAll("input[data-mirror]")) {
      const source = document.querySelector(hidden.dataset.mirror);
      if (source) hidden.value = source.value;
    }
  }
  document.addEventListener("input", mirror);
  document.addEventListener("change", mirror);
  document.addEventListener("DOMContentLoaded", mirror);
})();
