// The Keys page's result renderer: after a rotation (POST /api/keys/rotate), say what happened and
// show the keys as they are now, without reloading the page (which would lose the message).
"use strict";

(function () {
  const renderers = (window.consoleRender = window.consoleRender || {});
  const BADGES = { active: "badge ok", next: "badge warn", retiring: "badge", expired: "badge bad" };

  const el = window.consoleEl; // (tag, text, cls): console.js

  function when(iso) {
    return iso ? iso.replace("T", " ").replace(/(\.\d+)?(Z|[+-]00:00)$/, "") : "—";
  }

  function cell(text, cls) {
    return el("td", text, cls);
  }

  function signingRow(key) {
    const row = el("tr", undefined, "key-" + key.state);
    const kid = el("td");
    kid.append(el("code", key.kid, "kid"), " ", el("span", key.algorithm, "muted"));
    const state = el("td");
    state.append(el("span", key.state, BADGES[key.state] || "badge"));
    const ring = el("td");
    ring.append(el("code", key.keyring_key || "—"));
    row.append(
      kid,
      state,
      cell(when(key.created_at), "mono nowrap"),
      cell(when(key.active_from), "mono nowrap"),
      cell(when(key.retired_at), "mono nowrap"),
      cell(when(key.published_until), "mono nowrap"),
      ring,
    );
    return row;
  }

  function keyringItem(key) {
    const item = el("li");
    item.append(el("code", key.kid), " ", el("span", key.active ? "active" : "decrypt only", key.active ? "badge ok" : "badge"));
    if (key.compromised_at) item.append(" ", el("span", "compromised", "badge bad"));
    if (key.in_use_here && !key.active) item.append(" ", el("span", "this listener, until it meets the new key", "badge warn"));
    return item;
  }

  renderers.keysRotated = (data, box) => {
    box.append(el("p", data.message, "alert ok"));
    const body = document.querySelector("table.keys-list tbody");
    if (!body) {
      window.location.reload(); // there was no table to update (no key before)
      return;
    }
    body.replaceChildren(...data.keys.signing_keys.map(signingRow));
    const ring = document.querySelector("ul.keyring-keys");
    if (ring) ring.replaceChildren(...data.keys.keyring.keys.map(keyringItem));
  };
})();
