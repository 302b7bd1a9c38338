// The console's one script: every <form data-api="..."> is sent as JSON to the admin API, so the
// console changes nothing the documented API could not (and the API's CSRF defence covers it).
//
//   data-api="/api/users/{username}/disable"  the endpoint; {field} is filled from the form, encoded
//   data-method="POST"                          the HTTP method (default POST)
//   data-confirm="Disable this account?"        asked first (destructive actions)
//   data-then="reload" | "go:/users/{username}" | "show" | "download"
//   data-render="name"                          with "show": window.consoleRender[name](data, box)
//   data-result="#id"                           where results and errors go (default: after the form)
//
// Field types: type=number → number; checkbox → boolean; <select multiple> → list; a <textarea
// data-lines> → list of non-empty lines; data-json → parsed JSON; data-skip-empty → left out if empty.
"use strict";

(function () {
  const renderers = (window.consoleRender = window.consoleRender || {});

  // One element with its class and text (set as text, never parsed as markup): every page's script
  // builds its results with this one, as window.consoleEl.
  function text(tag, value, cls) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (value !== undefined && value !== null) node.textContent = String(value);
    return node;
  }
  window.consoleEl = text;

  // A secret shown once (a one-time password, an invitation link, an API token), with a copy button
  // (the clipboard API needs a secure context or localhost). Shared by the pages' own renderers.
  window.consoleSecretRow = (id, value) => {
    const row = text("p", "", "otp-row");
    const code = text("code", value, "otp");
    code.id = id;
    row.append(code);
    if (navigator.clipboard) {
      const copy = text("button", "Copy", "secondary");
      copy.type = "button";
      copy.addEventListener("click", () =>
        navigator.clipboard.writeText(value).then(
          () => (copy.textContent = "Copied"),
          () => (copy.textContent = "Copy failed: select it"),
        ),
      );
      row.append(copy);
    }
    return row;
  };

  renderers.json = (data, box) => box.append(text("pre", JSON.stringify(data, null, 2), "code"));
  renderers.message = (data, box) =>
    box.append(text("p", (data && data.message) || "Done.", "alert ok"));

  function fields(form) {
    const body = {};
    for (const el of form.elements) {
      if (!el.name || el.disabled || el.type === "submit" || el.type === "button") continue;
      let value;
      if (el.type === "checkbox") value = el.checked;
      else if (el.type === "number") value = el.value === "" ? null : Number(el.value);
      else if (el.multiple) value = Array.from(el.selectedOptions, (o) => o.value);
      else if (el.dataset.lines !== undefined)
        value = el.value.split("\n").map((l) => l.trim()).filter(Boolean);
      else if (el.dataset.json !== undefined) value = el.value.trim() ? JSON.parse(el.value) : null;
      else value = el.value;
      if (el.dataset.skipEmpty !== undefined && (value === "" || value === null)) continue;
      body[el.name] = value;
    }
    return body;
  }

  function fill(template, body) {
    return template.replace(/\{(\w+)\}/g, (_, name) => encodeURIComponent(String(body[name] ?? "")));
  }

  function resultBox(form) {
    const sel = form.dataset.result;
    let box = sel ? document.querySelector(sel) : form.nextElementSibling;
    if (!box || !box.classList.contains("result")) {
      box = document.createElement("div");
      box.className = "result";
      box.setAttribute("role", "status");
      box.setAttribute("aria-live", "polite");
      form.after(box);
    }
    return box;
  }

  // What the admin typed into a form the API refused for a stale second factor (a reason, a policy
  // draft) survives the trip to the step-up page and back: kept in this tab's sessionStorage (this
  // origin only, gone with the tab) when they follow the link, put back into the same form once when
  // the page loads again, never sent by itself. Passwords and files are never kept.
  const KEPT = "console.kept";
  const formKey = (form) => location.pathname + " " + (form.id || form.dataset.api);

  function keep(form) {
    const values = {};
    for (const el of form.elements) {
      if (!el.name || ["password", "file", "submit", "button"].includes(el.type)) continue;
      if (el.type === "radio") {
        if (el.checked) values[el.name] = el.value;
      } else if (el.type === "checkbox") values[el.name] = el.checked;
      else if (el.multiple) values[el.name] = Array.from(el.selectedOptions, (o) => o.value);
      else values[el.name] = el.value;
    }
    try {
      sessionStorage.setItem(KEPT, JSON.stringify({ form: formKey(form), values }));
    } catch (err) {
      // Storage refused (full, disabled): the form comes back empty, as it did before.
    }
  }

  function putBack() {
    let kept = null;
    try {
      kept = JSON.parse(sessionStorage.getItem(KEPT) || "null");
      sessionStorage.removeItem(KEPT);
    } catch (err) {
      return;
    }
    if (!kept || !kept.values) return;
    const form = Array.from(document.querySelectorAll("form[data-api]")).find((f) => formKey(f) === kept.form);
    if (!form) return;
    for (const el of form.elements) {
      if (!el.name || !Object.hasOwn(kept.values, el.name)) continue;
      const value = kept.values[el.name];
      if (el.type === "radio") el.checked = el.value === value;
      else if (el.type === "checkbox") el.checked = Boolean(value);
      else if (el.multiple) for (const o of el.options) o.selected = value.includes(o.value);
      else if (!["password", "file", "submit", "button"].includes(el.type)) el.value = value;
    }
    // A page's own script may carry more than the form (the policy editor's draft).
    form.dispatchEvent(new CustomEvent("console:restored", { bubbles: true }));
    resultBox(form).replaceChildren(
      text("p", "You confirmed it's you. What you typed is back: send it again.", "alert ok"),
    );
    form.scrollIntoView({ block: "center" });
  }

  // The link an error's location leads to, by its reason; any other: the sign-in page.
  const LINK_TEXT = {
    "step-up-required": "Confirm it's you",
    "lockdown-passkey-required": "Confirm with your passkey",
  };

  function showError(box, status, data, form) {
    const p = text("p", (data && data.message) || `The request failed (HTTP ${status}).`, "alert");
    if (data && data.location) {
      p.append(" ");
      const a = text("a", LINK_TEXT[data.error] || "Sign in");
      // Back to this very page afterwards (the gateway accepts the console's origin as a return URL),
      // where the form is filled in again.
      const next = new URL(data.location, location.href);
      next.searchParams.set("rd", location.href);
      a.href = next.href;
      if (form) a.addEventListener("click", () => keep(form));
      p.append(a);
    }
    box.append(p);
    if (data && Array.isArray(data.findings)) renderers.findings?.(data, box);
    // A refused close of an incident record answers with its whole recovery checklist.
    if (data && Array.isArray(data.checks)) renderers.checks?.(data, box);
  }

  async function submit(form, event) {
    event.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    const box = resultBox(form);
    box.replaceChildren();
    let body;
    try {
      body = fields(form);
    } catch (err) {
      showError(box, 400, { message: "A field holds malformed JSON: " + err.message });
      return;
    }
    const method = (form.dataset.method || "POST").toUpperCase();
    const url = fill(form.dataset.api, body);
    const buttons = form.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    form.setAttribute("aria-busy", "true");
    try {
      const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
      if (method !== "GET" && method !== "HEAD") {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body);
      }
      const response = await fetch(url, init);
      const then = form.dataset.then || "reload";
      if (response.ok && then === "download") {
        const blob = await response.blob();
        const name = /filename="?([^";]+)"?/.exec(response.headers.get("content-disposition") || "");
        const link = document.createElement("a");
        link.href = URL.createObjectURL(blob);
        link.download = name ? name[1] : "download";
        document.body.append(link);
        link.click();
        link.remove();
        box.append(text("p", "Downloaded " + link.download + ".", "alert ok"));
        return;
      }
      const type = response.headers.get("content-type") || "";
      const data = type.includes("json") ? await response.json() : null;
      if (!response.ok) {
        showError(box, response.status, data, form);
        return;
      }
      if (then === "reload") window.location.reload();
      else if (then.startsWith("go:")) window.location.assign(fill(then.slice(3), { ...body, ...(data || {}) }));
      else (renderers[form.dataset.render || "json"] || renderers.json)(data, box, form);
    } catch (err) {
      showError(box, 0, { message: "The admin API could not be reached: " + err.message });
    } finally {
      buttons.forEach((b) => (b.disabled = false));
      form.removeAttribute("aria-busy");
    }
  }

  // After the page's own scripts (deferred, like this one) have added their listeners.
  if (document.readyState === "complete") putBack();
  else document.addEventListener("DOMContentLoaded", putBack);

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.api) submit(form, event);
  });
})();
