// The Policies section: the draft editor's forms carry the draft, and their answers are drawn here.
//
// Every step form (validate, diff, test, what-if, save/propose) has a hidden input marked data-draft;
// it is filled with the editor's text just before console.js sends the form (a capturing listener
// runs before console.js's bubbling one). The renderers below turn the API's JSON into tables; a
// finding's line number moves the editor's cursor to that line.
"use strict";

(function () {
  const renderers = (window.consoleRender = window.consoleRender || {});

  const el = window.consoleEl; // (tag, text, cls): console.js

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function table(headers, rows, cls) {
    const wrap = el("div", null, "table-wrap");
    const t = el("table", null, "list stack " + (cls || ""));
    const head = el("thead");
    const tr = el("tr");
    headers.forEach((h) => tr.append(el("th", h)));
    head.append(tr);
    const body = el("tbody");
    rows.forEach((row) => body.append(row));
    t.append(head, body);
    wrap.append(t);
    return wrap;
  }

  function row(cells, cls) {
    const tr = el("tr", null, cls);
    cells.forEach((c) => {
      const td = el("td");
      if (c instanceof Node) td.append(c);
      else td.textContent = c === null || c === undefined ? "" : String(c);
      tr.append(td);
    });
    return tr;
  }

  function badge(text, cls) {
    return el("span", text, "badge " + (cls || ""));
  }

  function code(text) {
    return el("code", text);
  }

  // -- the draft travels with every step ---------------------------------------------------------

  const draft = () => document.getElementById("draft");

  document.addEventListener(
    "submit",
    (event) => {
      const form = event.target;
      const editor = draft();
      if (!(form instanceof HTMLFormElement) || !editor) return;
      form.querySelectorAll("[data-draft]").forEach((input) => (input.value = editor.value));
    },
    true
  );

  // Back from the step-up page with a form console.js filled in again: its draft goes back into the
  // editor (the editor is not part of the form).
  document.addEventListener("console:restored", (event) => {
    const kept = event.target.querySelector("[data-draft]");
    const editor = draft();
    if (kept && editor && kept.value) editor.value = kept.value;
  });

  function goToLine(line) {
    const editor = draft();
    if (!editor || !line) return;
    const lines = editor.value.split("\n");
    let start = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
    const end = start + (lines[line - 1] || "").length;
    editor.focus();
    editor.setSelectionRange(start, end);
    // Scroll the line into view: the textarea's line height times the line number.
    const height = parseFloat(getComputedStyle(editor).lineHeight) || 19;
    editor.scrollTop = Math.max(0, (line - 3) * height);
  }

  function lineCell(line) {
    if (!line) return el("span", "—", "muted");
    const button = el("button", "line " + line, "link line-link");
    button.type = "button";
    button.title = "Show this line in the draft";
    button.addEventListener("click", () => goToLine(line));
    return button;
  }

  // -- validate ----------------------------------------------------------------------------------

  renderers.findings = (data, box) => {
    const findings = (data && data.findings) || [];
    if (!findings.length) return;
    box.append(
      table(
        ["Line", "Severity", "Finding", "What to do"],
        findings.map((f) =>
          row(
            [lineCell(f.line), badge(f.severity, f.severity === "error" ? "bad" : "warn"), code(f.code), f.message],
            f.severity === "error" ? "finding error" : "finding"
          )
        ),
        "findings"
      )
    );
  };

  renderers.validate = (data, box) => {
    const summary = `${plural(data.rules, "rule")}, ${plural(data.links, "role grant")}: `;
    if (data.ok) {
      const warn = data.warnings ? `no errors, ${plural(data.warnings, "warning")} to read.` : "no findings.";
      box.append(el("p", summary + warn, "alert ok"));
    } else {
      box.append(
        el("p", `${plural(data.errors, "error")} (${plural(data.warnings, "warning")}): fix the errors before saving.`, "alert")
      );
    }
    renderers.findings(data, box);
  };

  // -- diff --------------------------------------------------------------------------------------

  function diffBlock(text) {
    const pre = el("pre", null, "code diff");
    text.split("\n").forEach((line, i, all) => {
      if (i === all.length - 1 && line === "") return;
      let cls = "";
      if (line.startsWith("+") && !line.startsWith("+++")) cls = "add";
      else if (line.startsWith("-") && !line.startsWith("---")) cls = "del";
      pre.append(el("span", line, cls), "\n");
    });
    return pre;
  }

  renderers.diff = (data, box) => {
    if (data.same) {
      box.append(el("p", `The draft is the live policy (version ${data.live_version}): nothing to change.`, "alert ok"));
      return;
    }
    const p = el("p", null, "diff-summary");
    p.append(
      "Against version " + data.live_version + ": ",
      el("span", `+${data.added}`, "add"),
      " ",
      el("span", `−${data.removed}`, "del"),
      " lines."
    );
    box.append(p, diffBlock(data.diff));
  };

  // -- tests -------------------------------------------------------------------------------------

  renderers.tests = (data, box) => {
    const ok = data.failed === 0;
    box.append(
      el(
        "p",
        ok
          ? `All ${plural(data.total, "case")} pass.`
          : `${data.failed} of ${plural(data.total, "case")} fail: the draft decides them otherwise.`,
        ok ? "alert ok" : "alert"
      )
    );
    box.append(
      table(
        ["Result", "Case", "Request", "Principals", "Expected", "Got", "Why"],
        data.cases.map((c) =>
          row(
            [
              badge(c.passed ? "pass" : "fail", c.passed ? "ok" : "bad"),
              c.where + (c.name ? " " + c.name : ""),
              code(`${c.method} ${c.route} ${c.path}`),
              c.principals.join(" "),
              c.expected,
              `${c.got} [${c.reason}]`,
              c.explanation,
            ],
            c.passed ? "case" : "case failed"
          )
        ),
        "cases"
      )
    );
  };

  // -- what-if -----------------------------------------------------------------------------------

  renderers.whatif = (data, box) => {
    if (!data.requests) {
      box.append(
        el(
          "p",
          `No decisions were sampled in the last ${plural(data.hours, "hour")}: there is no traffic to replay yet. ` +
            "Widen the window, or check again once requests have reached the gateway.",
          "alert ok"
        )
      );
      return;
    }
    const flips = data.to_deny + data.to_allow;
    const summary =
      `${plural(data.requests, "request")} (${plural(data.shapes, "distinct request")}) in the last ` +
      `${plural(data.hours, "hour")}, replayed against version ${data.live_version}: `;
    box.append(
      el(
        "p",
        flips
          ? summary + `${data.to_deny} allowed today would be denied, ${data.to_allow} denied today would be allowed.`
          : summary + "no decision changes.",
        flips ? "alert warn" : "alert ok"
      )
    );
    box.append(el("h4", "Per route"));
    box.append(
      table(
        ["Route", "Requests", "Allow → deny", "Deny → allow"],
        data.routes.map((r) =>
          row([r.route, r.requests, el("span", r.to_deny, r.to_deny ? "del" : "muted"), el("span", r.to_allow, r.to_allow ? "add" : "muted")])
        ),
        "routes"
      )
    );
    if (!data.flips.length) return;
    box.append(el("h4", "Requests that flip"));
    box.append(
      table(
        ["Flip", "Route", "Request", "Principals", "Requests", "Today", "Under the draft"],
        data.flips.map((f) =>
          row(
            [
              badge(f.direction === "to-deny" ? "allow → deny" : "deny → allow", f.direction === "to-deny" ? "bad" : "warn"),
              f.route,
              code(`${f.method} ${f.path}`),
              f.principals.join(" "),
              f.count,
              f.live,
              f.draft,
            ],
            "flip " + f.direction
          )
        ),
        "flips"
      )
    );
    if (data.omitted) box.append(el("p", `${plural(data.omitted, "more flipping request shape")} not listed.`, "muted"));
  };
})();
