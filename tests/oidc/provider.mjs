// A local OpenID Connect provider for the browser sign-in test (tests/app/test_browser_pacs.py).
//
// oidc-provider (a certified OpenID Connect implementation) on a loopback port, with
// one confidential client (the dashboard) and a fixed table of accounts. Sign-in uses
// the package's built-in development login form (devInteractions): any password is
// accepted, but only the accounts in the table exist, so a login outside it fails.
// The client is first party: the grant is given without a consent screen, as a
// hospital's identity provider does for its own applications.
//
// oidc-provider 8.x (package.json): the last line that runs on Debian 12's Node.js 18;
// 9.x needs Node.js 20.19 or later (it calls URL.parse).
//
// Configuration comes from the environment, so that no secret is on a command line:
//   OIDC_PORT           the loopback port to listen on
//   OIDC_CLIENT_ID      the dashboard's client id
//   OIDC_CLIENT_SECRET  its secret
//   OIDC_REDIRECT_URI   the dashboard's callback (Streamlit's /oauth2callback)
//   OIDC_ACCOUNTS       JSON: {"login": {"email": ..., "name": ..., "groups": [...]}}
//   OIDC_COOKIE_KEY     the key signing the provider's own cookies
// Prints "listening on <issuer>" once it accepts connections.

import Provider from 'oidc-provider';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`provider.mjs: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

const port = Number(required('OIDC_PORT'));
const issuer = `http://127.0.0.1:${port}`;
const accounts = JSON.parse(required('OIDC_ACCOUNTS'));

const configuration = {
  clients: [{
    client_id: required('OIDC_CLIENT_ID'),
    client_secret: required('OIDC_CLIENT_SECRET'),
    redirect_uris: [required('OIDC_REDIRECT_URI')],
    post_logout_redirect_uris: [required('OIDC_REDIRECT_URI')],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  cookies: { keys: [required('OIDC_COOKIE_KEY')] },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'groups'] },
  // Streamlit reads the user from the ID token alone (it never calls /me).
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    const account = Object.hasOwn(accounts, id) ? accounts[id] : undefined;
    if (account === undefined) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, email_verified: true, ...account };
      },
    };
  },
  // First party: grant what the dashboard asks for, with no consent screen.
  async loadExistingGrant(ctx) {
    const { client, session } = ctx.oidc;
    const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: client.clientId,
                                                accountId: session.accountId });
    grant.addOIDCScope('openid email profile');
    grant.addOIDCClaims(['email', 'email_verified', 'name', 'groups']);
    await grant.save();
    return grant;
  },
};

const provider = new Provider(issuer, configuration);
provider.listen(port, '127.0.0.1', () => {
  console.log(`listening on ${issuer}`);
});
