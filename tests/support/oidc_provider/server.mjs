// A real OpenID provider for the gateway's tests: panva/oidc-provider (OpenID Certified), configured
// from one JSON file given as the only argument (tests/support/oidc_peer.py writes it):
//
//   {port, issuer, jwks: {keys: [private JWKs]}, clients: [client metadata],
//    accounts: {id: {password, claims: {...}, amr: [...], acr}}, testControl: bool,
//    resourceServers: {<resource indicator URI>: {scope, audience, accessTokenTTL, accessTokenFormat,
//                      jwt: {sign: {alg, key}}}}, extraScopes: [...]}   (the last two optional)
//
// What it does like a production provider: authorization code flow with PKCE required (S256 only),
// its own sign-in page (a plain username/password form: the browser test types into it), ID tokens
// with email, email_verified, groups, amr, acr and sid, userinfo, RP-initiated logout and back-channel
// logout. Consent is implied for the configured (first-party) clients. For machine clients: the client
// credentials grant, resource indicators (RFC 8707: each configured resource server says its audience,
// scopes, token lifetime and format: opaque, or RFC 9068 JWT signed with the provider's key or, for
// attack tests, an HMAC secret), token introspection (RFC 7662) and revocation (RFC 7009).
//
// Test-only switches, only with testControl (never on in a real deployment):
//   POST /__test/next-id-token  (text body) the next token response carries this id_token instead
//   POST /__test/delay          (text body: milliseconds) every later response waits this long first
//   POST /__test/accounts       (JSON {id: account}) add or replace accounts
//   GET  /__test/backchannel    JSON list of the back-channel logout deliveries so far
// Prints "listening <issuer>" on stdout once it accepts connections.

import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = config.accounts;
const resourceServers = config.resourceServers || {};

const html = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${html(title)}</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>body{font-family:system-ui,sans-serif;background:#eef2f7;margin:0;display:grid;place-items:center;min-height:100vh}
main{background:#fff;padding:32px;border-radius:12px;box-shadow:0 4px 24px #0002;width:320px}
h1{font-size:1.3rem;margin:0 0 4px}p{color:#555;margin:0 0 16px}label{display:block;margin:12px 0 4px;font-size:.9rem}
input{width:100%;box-sizing:border-box;padding:8px;border:1px solid #bbb;border-radius:6px}
button{margin-top:18px;width:100%;padding:10px;border:0;border-radius:6px;background:#3b5bdb;color:#fff;font-weight:600}
.err{color:#c92a2a}a{display:block;margin-top:14px;text-align:center;color:#555}</style></head>
<body><main>${body}</main></body></html>`;
}

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: config.jwks,
  cookies: { keys: ['gateway-test-cookie-key-one', 'gateway-test-cookie-key-two'] },
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access', ...(config.extraScopes || [])],
  claims: {
    // How and when the person authenticated travels with every ID token (as Entra ID and Okta do).
    openid: ['sub', 'amr', 'acr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  // Put the claims of the requested scopes in the ID token too (the gateway reads the ID token).
  conformIdTokenClaims: false,
  acrValues: ['urn:test:loa:1', 'urn:test:loa:2'],
  pkce: { required: () => true },
  // The provider's SSRF guard refuses loopback addresses; here the gateways it calls back (back-channel
  // logout) are on loopback by design.
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  features: {
    devInteractions: { enabled: false },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // No resource asked for: no audience (an opaque token for userinfo, as before these features).
      defaultResource: (ctx, client, oneOf) => oneOf,
      useGrantedResource: () => false,
      getResourceServerInfo(ctx, indicator) {
        const server = resourceServers[indicator];
        if (!server) throw new errors.InvalidTarget();
        return server;
      },
    },
  },
  ttl: {
    Session: 3600, Interaction: 600, Grant: 3600, AuthorizationCode: 60, IdToken: 3600, AccessToken: 600,
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || 600,
  },
  async findAccount(ctx, id) {
    const account = accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, ...account.claims };
      },
    };
  },
  async loadExistingGrant(ctx) {
    // First-party clients: consent is implied, the grant covers what was asked for.
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(ctx.oidc.params.scope);
    await grant.save();
    return grant;
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Error', `<h1>Something went wrong</h1><p class="err">${html(out.error)}: ${html(out.error_description || '')}</p>`);
  },
});
// Loopback only; the tests reach it as the issuer says.
provider.proxy = false;

const control = { nextIdToken: null, delay: 0, backchannel: [] };

async function readBody(ctx) {
  let data = '';
  for await (const chunk of ctx.req) data += chunk;
  return data;
}

provider.use(async (ctx, next) => {
  if (config.testControl && ctx.path.startsWith('/__test/')) {
    if (ctx.path === '/__test/next-id-token' && ctx.method === 'POST') {
      control.nextIdToken = await readBody(ctx);
      ctx.status = 204;
      return;
    }
    if (ctx.path === '/__test/delay' && ctx.method === 'POST') {
      control.delay = Number(await readBody(ctx)) || 0;
      ctx.status = 204;
      return;
    }
    if (ctx.path === '/__test/accounts' && ctx.method === 'POST') {
      Object.assign(accounts, JSON.parse(await readBody(ctx)));
      ctx.status = 204;
      return;
    }
    if (ctx.path === '/__test/backchannel') {
      ctx.body = control.backchannel;
      return;
    }
    ctx.status = 404;
    return;
  }
  if (control.delay) await sleep(control.delay);
  await next();
  if (ctx.path === '/token' && ctx.status === 200 && control.nextIdToken !== null && ctx.body?.id_token) {
    ctx.body = { ...ctx.body, id_token: control.nextIdToken };
    control.nextIdToken = null;
  }
});

provider.on('backchannel.success', (ctx, client, accountId, sid) => {
  control.backchannel.push({ client: client.clientId, accountId, sid, ok: true });
});
provider.on('backchannel.error', (ctx, err, client, accountId, sid) => {
  control.backchannel.push({ client: client.clientId, accountId, sid, ok: false, error: `${err} ${err.cause ?? ''}` });
});

// The sign-in page: GET shows the form, POST checks the password, /abort cancels (access_denied).
provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([\w-]+)(\/login|\/abort)?$/);
  if (!match) return next();
  ctx.set('cache-control', 'no-store');
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { uid, prompt, params } = details;
  if (match[2] === '/abort') {
    const result = { error: 'access_denied', error_description: 'End-User aborted interaction' };
    return provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
  }
  if (prompt.name !== 'login') {
    // Consent is implied (loadExistingGrant): finish with the grant created there.
    const grant = await provider.Grant.find(details.grantId);
    return provider.interactionFinished(ctx.req, ctx.res, { consent: { grantId: grant ? grant.jti : undefined } }, { mergeWithLastSubmission: true });
  }
  if (match[2] === '/login' && ctx.method === 'POST') {
    const form = new URLSearchParams(await readBody(ctx));
    const id = form.get('username') || '';
    const account = accounts[id];
    if (!account || account.password !== form.get('password')) {
      ctx.type = 'html';
      ctx.status = 401;
      ctx.body = loginForm(uid, params, 'Wrong username or password.', id);
      return;
    }
    const login = { accountId: id, remember: true };
    if (account.amr) login.amr = account.amr;
    if (account.acr) login.acr = account.acr;
    return provider.interactionFinished(ctx.req, ctx.res, { login }, { mergeWithLastSubmission: false });
  }
  ctx.type = 'html';
  ctx.body = loginForm(uid, params, '', params.login_hint || '');
});

function loginForm(uid, params, error, username) {
  return page('Test IdP: sign in', `<h1>Test IdP</h1><p>Sign in to continue to ${html(params.client_id)}</p>
${error ? `<p class="err" role="alert">${html(error)}</p>` : ''}
<form method="post" action="/interaction/${html(uid)}/login" autocomplete="off">
<label for="username">Username</label><input id="username" name="username" value="${html(username)}" required autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" required>
<button type="submit">Sign in</button></form>
<a id="cancel" href="/interaction/${html(uid)}/abort">Cancel</a>`);
}

const server = provider.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`listening ${config.issuer}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
