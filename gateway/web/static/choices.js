// The "Your choices" buttons of the account's privacy page (/.gateway/account/privacy). Each sends its
// answer as JSON to the consent API (/.gateway/api/consents, /.gateway/api/objections), the one place
// consents and objections are recorded, then reloads the page with a notice. The buttons are disabled
// in the HTML and enabled here, so without JavaScript nothing looks clickable that does nothing.
(function () {
  "use strict";
  // The page's CSRF token (csrf.js, loaded before this script).
  const csrf = globalThis.gatewayCsrf;
  function fail(message) {
    const box = document.getElementById("choices-error");
    if (!box) return;
    box.textContent = message;
    box.hidden = false;
  }
  async function send(button) {
    const resp = await fetch(button.dataset.api, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrftoken": csrf(), accept: "application/json" },
      body: button.dataset.body,
    });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(data.message || "The choice could not be recorded.");
  }
  for (const button of document.querySelectorAll("#choices button[data-api]")) {
    button.disabled = false;
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await send(button);
        const notice = encodeURIComponent(button.dataset.done || "Saved.");
        window.location.assign(window.location.pathname + "?notice=" + notice + "#choices");
      } catch (err) {
        fail(err.message);
        button.disabled = false;
      }
    });
  }
})();
