// WebAuthn ceremonies for the gateway's pages. The only JavaScript the pages need: everything else
// works with plain forms. Options come from the JSON API; binary fields travel as base64url.
(function () {
  "use strict";
  const b64u = {
    decode(s) {
      s = s.replace(/-/g, "+").replace(/_/g, "/");
      const bin = atob(s + "===".slice((s.length + 3) % 4));
      return Uint8Array.from(bin, (c) => c.charCodeAt(0)).buffer;
    },
    encode(buf) {
      const bytes = new Uint8Array(buf);
      let s = "";
      for (const b of bytes) s += String.fromCharCode(b);
      return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    },
  };
  // The page's CSRF token (csrf.js, loaded before this script).
  const csrf = globalThis.gatewayCsrf;
  async function post(url, body) {
    const resp = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrftoken": csrf(), accept: "application/json" },
      body: JSON.stringify(body || {}),
    });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(data.message || data.detail || "The request failed.");
    return data;
  }
  function creationOptions(o) {
    o.challenge = b64u.decode(o.challenge);
    o.user.id = b64u.decode(o.user.id);
    (o.excludeCredentials || []).forEach((c) => (c.id = b64u.decode(c.id)));
    return o;
  }
  function requestOptions(o) {
    o.challenge = b64u.decode(o.challenge);
    (o.allowCredentials || []).forEach((c) => (c.id = b64u.decode(c.id)));
    return o;
  }
  function credentialJSON(c) {
    const r = c.response;
    const out = { id: c.id, rawId: b64u.encode(c.rawId), type: c.type,
      clientExtensionResults: c.getClientExtensionResults ? c.getClientExtensionResults() : {},
      authenticatorAttachment: c.authenticatorAttachment || null, response: {} };
    out.response.clientDataJSON = b64u.encode(r.clientDataJSON);
    if (r.attestationObject) {
      out.response.attestationObject = b64u.encode(r.attestationObject);
      if (r.getTransports) out.response.transports = r.getTransports();
    } else {
      out.response.authenticatorData = b64u.encode(r.authenticatorData);
      out.response.signature = b64u.encode(r.signature);
      if (r.userHandle) out.response.userHandle = b64u.encode(r.userHandle);
    }
    return out;
  }
  function show(el, message) {
    const box = document.querySelector(el.dataset.error || "#webauthn-error");
    if (box) { box.textContent = message; box.hidden = false; }
  }
  async function run(el) {
    const mode = el.dataset.webauthn;
    const rd = el.dataset.rd || "";
    try {
      if (!window.PublicKeyCredential) throw new Error("This browser does not support passkeys.");
      if (mode === "register") {
        const name = (document.querySelector(el.dataset.nameInput || "#passkey-name") || {}).value || "Passkey";
        const opts = await post("/.gateway/api/webauthn/register/options", { discoverable: true });
        const cred = await navigator.credentials.create({ publicKey: creationOptions(opts) });
        const done = await post("/.gateway/api/webauthn/register/verify", { name, credential: credentialJSON(cred), rd });
        window.location.assign(done.redirect || "/.gateway/account");
      } else {
        const base = mode === "passwordless" ? "/.gateway/api/login/passkey" : "/.gateway/api/mfa/webauthn";
        const opts = await post(base + "/options", {});
        const cred = await navigator.credentials.get({ publicKey: requestOptions(opts) });
        const done = await post(base + "/verify", { credential: credentialJSON(cred), rd });
        window.location.assign(done.redirect || "/.gateway/account");
      }
    } catch (err) {
      show(el, err && err.name === "NotAllowedError" ? "The passkey prompt was cancelled or timed out." : String(err.message || err));
    }
  }
  document.addEventListener("click", (ev) => {
    const el = ev.target.closest("[data-webauthn]");
    if (el) { ev.preventDefault(); run(el); }
  });
})();
