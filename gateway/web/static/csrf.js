// The CSRF token the gateway's page scripts (webauthn.js, choices.js) send in x-csrftoken: one reader,
// loaded before them (base.html). The token the server rendered into this page's forms first: exactly
// the one it checks the cookie against, whatever the cookie is named. Without a form on the page, the
// cookie: the __Host- one when there is one (served over HTTPS, the one the server reads), never a
// plain gateway_csrf an app on this host may have set (with Path=/.gateway it would come first in
// document.cookie); the plain one only without it (plain HTTP, insecure cookies).
(function () {
  "use strict";
  function gatewayCsrf() {
    const field = document.querySelector('input[name="_csrf_token"]');
    if (field && field.value) return field.value;
    const jar = "; " + document.cookie;
    for (const name of ["__Host-gateway_csrf", "gateway_csrf"]) {
      const at = jar.indexOf("; " + name + "=");
      if (at >= 0) {
        const value = jar.slice(at + name.length + 3).split(";")[0];
        if (value) return decodeURIComponent(value);
      }
    }
    return "";
  }
  // Read-only: no other script can swap in a reader of its own.
  Object.defineProperty(globalThis, "gatewayCsrf", { value: gatewayCsrf });
})();
