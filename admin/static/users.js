// The Users section's result renderers (see console.js for how forms reach the API).
//
//   created  the answer to POST /api/users: the one-time password or the invitation link, shown once,
//            with a copy button and a link to the new account's page.
//   invited  the answer to POST /api/users/{username}/invite: the new invitation link, shown once.
//   reset    the answer to POST /api/users/{username}/reset-factors: what was removed, and with
//            "invite" the new invitation link, shown once.
"use strict";

(function () {
  const renderers = (window.consoleRender = window.consoleRender || {});

  const el = window.consoleEl; // (tag, text, cls): console.js

  const secretRow = (id, value) => window.consoleSecretRow(id, value);

  function until(iso) {
    return iso ? iso.replace("T", " ").replace(/:\d\d(\.\d+)?(Z|[+-]00:00)$/, " UTC") : "";
  }

  function accountLink(username) {
    const link = el("a", "Open the account");
    link.href = "/users/" + encodeURIComponent(username);
    return link;
  }

  renderers.created = (data, box, form) => {
    const card = el("div", undefined, "alert ok created");
    if (data.invitation_url) {
      card.append(el("p", `Created ${data.username}. Send them this invitation link; it is shown only now.`));
      card.append(secretRow("invitation-link", data.invitation_url));
      const next = el("p", undefined, "muted");
      next.append(
        `It works once, until ${until(data.invitation_expires_at)}: they choose their password there, ` +
          "sign in, then add a second factor. ",
      );
      next.append(accountLink(data.username));
      card.append(next);
    } else {
      card.append(el("p", `Created ${data.username}. Give them this one-time password; it is shown only now.`));
      card.append(secretRow("one-time-password", data.one_time_password));
      const next = el("p", undefined, "muted");
      next.append(`They sign in at ${data.sign_in_url}, choose a new password, then add a second factor. `);
      next.append(accountLink(data.username));
      card.append(next);
    }
    box.append(card);
    if (form) form.reset();
  };

  renderers.reset = (data, box, form) => {
    if (data.invitation_url) {
      renderers.invited(data, box, form);
      return;
    }
    const card = el("div", undefined, "alert ok");
    card.append(el("p", data.message));
    card.append(el("p", "Reload the page to see the account's history.", "muted"));
    box.append(card);
    if (form) form.reset();
  };

  renderers.invited = (data, box, form) => {
    const card = el("div", undefined, "alert ok created");
    card.append(el("p", data.message));
    card.append(secretRow("invitation-link", data.invitation_url));
    card.append(el("p", "Send it to them; it is shown only now. Reload the page to see the account's history.", "muted"));
    box.append(card);
    if (form) form.reset();
  };
})();
