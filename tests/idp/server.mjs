// A real OpenID Provider for the broker's integration tests, started by the test suite.
//
// Environment:
//   IDP_ISSUER  issuer URL, e.g. http://127.0.0.1:PORT (the test binds the port first)
//   IDP_FD      an already-listening socket inherited from the test (no port race, no polling)
//   IDP_JWKS    path of a private JWKS (RSA and EC keys, with kids) used to sign tokens
//
// Clients use the client_credentials grant with a resource indicator; access tokens are JWTs
// (RFC 9068, typ at+jwt) whose sub is the client id. The resource selects audience and alg:
//   urn:token-broker      aud token-broker, RS256
//   urn:token-broker:es   aud token-broker, ES256
//   urn:other-api         aud other-api,    RS256
import { readFileSync } from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const issuer = process.env.IDP_ISSUER;
const fd = Number(process.env.IDP_FD);
const jwks = JSON.parse(readFileSync(process.env.IDP_JWKS, 'utf8'));

const resources = {
  'urn:token-broker': { audience: 'token-broker', alg: 'RS256' },
  'urn:token-broker:es': { audience: 'token-broker', alg: 'ES256' },
  'urn:other-api': { audience: 'other-api', alg: 'RS256' },
};

const client = (id, claims) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: 'client_secret_post',
  'urn:test:claims': claims,
});

const provider = new Provider(issuer, {
  jwks,
  clients: [
    client('alice', { email_verified: true }),
    client('sam', { email_verified: true, groups: ['support'] }),
    client('mallory', {}),
  ],
  extraClientMetadata: { properties: ['urn:test:claims'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:token-broker',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => {
        const server = resources[indicator];
        if (!server) throw new Error(`unknown resource ${indicator}`);
        return {
          scope: 'broker',
          audience: server.audience,
          accessTokenFormat: 'jwt',
          accessTokenTTL: 600,
          jwt: { sign: { alg: server.alg } },
        };
      },
    },
  },
  extraTokenClaims: (ctx, token) => token.client?.['urn:test:claims'] ?? undefined,
});

const server = http.createServer(provider.callback());
server.listen({ fd }, () => {
  console.log('ready');
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
