// The Users section's result renderers (see console.js for how forms reach the API).
//
//   created  the answer to POST /api/users: the one-time password, shown once, with a copy button
//            and a link to the new account's page.
"use strict";

(function () {
  const renderers = (window.consoleRender = window.consoleRender || {});

  function el(tag, cls, value) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (value !== undefined) node.textContent = value;
    return node;
  }

  renderers.created = (data, box, form) => {
    const card = el("div", "alert ok created");
    card.append(el("p", "", `Created ${data.username}. Give them this one-time password; it is shown only now.`));
    const row = el("p", "otp-row");
    const code = el("code", "otp", data.one_time_password);
    code.id = "one-time-password";
    row.append(code);
    if (navigator.clipboard) {
      const copy = el("button", "secondary", "Copy");
      copy.type = "button";
      copy.addEventListener("click", () =>
        navigator.clipboard.writeText(data.one_time_password).then(
          () => (copy.textContent = "Copied"),
          () => (copy.textContent = "Copy failed: select it"),
        ),
      );
      row.append(copy);
    }
    card.append(row);
    const next = el("p", "muted");
    next.append(`They sign in at ${data.sign_in_url}, choose a new password, then add a second factor. `);
    const link = el("a", "", "Open the account");
    link.href = "/users/" + encodeURIComponent(data.username);
    next.append(link);
    card.append(next);
    box.append(card);
    if (form) form.reset();
  };
})();
