// An app's calls to LinkupAPI V2 through viewgate, written apart from the
// crate: plain Node.js (20+, no npm packages), its built-in fetch (undici,
// which keeps a pooled keep-alive connection, as most apps' HTTP clients do).
//
// Given VIEWGATE_URL (the gateway's base URL) and VIEWGATE_KEY (a tenant
// key), it does what an app would:
//   1. lists its accounts (GET /v2/accounts, paged by limit/offset);
//   2. pages through one account's profile viewers, following
//      data.pagination.next_offset until has_more is false;
//   3. runs the same search_people twice: the second must be a cache hit
//      that cost nothing;
//   4. sends one invite with an Idempotency-Key, then retries it with the
//      same key, which must come back as a replay (idempotent-replayed: true).
// It prints one JSON summary line on stdout and exits 0, or prints
// {"ok":false,...} and exits 1 on any answer it did not expect. The key is
// never printed: messages name the request and the V2 error code only.
//
// Optional: VIEWGATE_ACCOUNT (the account to use; default the first listed),
// VIEWGATE_PAGE_SIZE (10), VIEWGATE_MAX_PAGES (100), VIEWGATE_TIMEOUT_MS
// (10000, per request), VIEWGATE_SEARCH (the keywords).

import { randomUUID } from 'node:crypto';

class Unexpected extends Error {}

function env(name, fallback) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    if (fallback === undefined) throw new Unexpected(`${name} is not set`);
    return fallback;
  }
  return value;
}

function positiveInt(name, fallback) {
  const value = Number(env(name, String(fallback)));
  if (!Number.isInteger(value) || value < 1) throw new Unexpected(`${name} must be a positive integer`);
  return value;
}

function expect(condition, message) {
  if (!condition) throw new Unexpected(message);
}

const summary = { ok: false, step: 'setup', requests: 0, retries: 0, credits_consumed: 0 };

// Retries an app would make: after 429 or 503, honouring retry-after (capped,
// so a misconfigured server cannot stall the app), at most twice. Anything
// else is the caller's to judge. The summary counts them.
const MAX_RETRIES = 2;
const MAX_RETRY_WAIT_MS = 5000;

async function call(config, method, path, body, extraHeaders = {}) {
  const headers = { 'x-api-key': config.key, accept: 'application/json', ...extraHeaders };
  if (body !== undefined) headers['content-type'] = 'application/json';
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(config.base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(config.timeoutMs),
    });
    summary.requests++;
    const text = await response.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      throw new Unexpected(`${method} ${path}: ${response.status} with a body that is not JSON`);
    }
    expect(response.headers.get('x-request-id'), `${method} ${path}: no x-request-id`);
    if ((response.status === 429 || response.status === 503) && attempt < MAX_RETRIES) {
      const seconds = Number(response.headers.get('retry-after') ?? '1');
      const wait = Math.min(Number.isFinite(seconds) ? seconds * 1000 : 1000, MAX_RETRY_WAIT_MS);
      summary.retries++;
      await new Promise((resolve) => setTimeout(resolve, wait));
      continue;
    }
    const replayed = response.headers.get('idempotent-replayed') === 'true';
    // A replay is the first answer again, charged once, when it was first given.
    if (!replayed && Number.isInteger(json?.metadata?.credits_consumed)) {
      summary.credits_consumed += json.metadata.credits_consumed;
    }
    if ('credits_remaining' in (json?.metadata ?? {}) && !replayed) {
      summary.credits_remaining = json.metadata.credits_remaining;
    }
    return { status: response.status, headers: response.headers, json, text, replayed };
  }
}

function expectOk(answer, what) {
  const code = answer.json?.error?.code;
  expect(
    answer.status === 200 && answer.json?.success === true,
    `${what}: expected 200 success, got ${answer.status}${code ? ` ${code}` : ''}`,
  );
}

async function listAccounts(config) {
  summary.step = 'accounts';
  const limit = 100;
  const ids = [];
  let total;
  for (let offset = 0, page = 0; total === undefined || ids.length < total; page++) {
    expect(page < config.maxPages, `GET /v2/accounts: more than ${config.maxPages} pages`);
    const answer = await call(config, 'GET', `/v2/accounts?limit=${limit}&offset=${offset}`);
    expectOk(answer, 'GET /v2/accounts');
    const { items, total: listed } = answer.json.data ?? {};
    expect(Array.isArray(items) && Number.isInteger(listed), 'GET /v2/accounts: no data.items or data.total');
    expect(answer.json.metadata?.credits_consumed === 0, 'GET /v2/accounts: listing is free');
    total = listed;
    if (items.length === 0) break;
    for (const item of items) {
      expect(typeof item.account_id === 'string', 'GET /v2/accounts: an item without account_id');
      ids.push(item.account_id);
    }
    offset += items.length;
  }
  expect(ids.length === total, `GET /v2/accounts: listed ${ids.length} of ${total}`);
  summary.accounts = { total, listed: ids };
  const account = process.env.VIEWGATE_ACCOUNT || ids[0];
  expect(account !== undefined, 'GET /v2/accounts: no account to use');
  expect(ids.includes(account), 'VIEWGATE_ACCOUNT is not one of the listed accounts');
  summary.account = account;
  return account;
}

async function pageViewers(config, account) {
  summary.step = 'viewers';
  const offsets = [];
  let items = 0;
  let inviteTarget = null;
  let offset = 0;
  for (;;) {
    expect(offsets.length < config.maxPages, `get_viewers: more than ${config.maxPages} pages`);
    offsets.push(offset);
    const body = { account_id: account, action: 'get_viewers', params: { count: config.pageSize, offset } };
    const answer = await call(config, 'POST', '/v2/profiles', body);
    expectOk(answer, `get_viewers at offset ${offset}`);
    const { viewers, pagination } = answer.json.data ?? {};
    expect(Array.isArray(viewers) && pagination, `get_viewers at offset ${offset}: no viewers or pagination`);
    const meta = answer.json.metadata;
    expect(meta.account_id === account && meta.action === 'get_viewers', 'get_viewers: metadata names another call');
    expect(
      ['hit', 'miss', 'coalesced', 'stale'].includes(meta.cache) && answer.headers.get('x-cache') === meta.cache.toUpperCase(),
      `get_viewers at offset ${offset}: cache ${meta.cache} / x-cache ${answer.headers.get('x-cache')}`,
    );
    items += viewers.length;
    inviteTarget ??= viewers.find((v) => typeof v.profile_url === 'string')?.profile_url ?? null;
    if (!pagination.has_more) break;
    // Follow the upstream's own next_offset: it need not be offset + count.
    const next = pagination.next_offset;
    expect(Number.isInteger(next) && next > offset, `get_viewers at offset ${offset}: has_more with next_offset ${next}`);
    offset = next;
  }
  summary.viewers = { page_size: config.pageSize, pages: offsets.length, offsets, items };
  return inviteTarget;
}

async function searchTwice(config, account) {
  summary.step = 'search';
  const body = { account_id: account, action: 'search_people', params: { keywords: config.keywords, count: config.pageSize } };
  const first = await call(config, 'POST', '/v2/profiles', body);
  expectOk(first, 'search_people');
  const second = await call(config, 'POST', '/v2/profiles', body);
  expectOk(second, 'search_people again');
  expect(second.json.metadata.cache === 'hit' && second.headers.get('x-cache') === 'HIT', `search_people again: cache ${second.json.metadata.cache}, not hit`);
  expect(second.json.metadata.credits_consumed === 0, 'search_people again: a hit must cost nothing');
  expect(JSON.stringify(first.json.data) === JSON.stringify(second.json.data), 'search_people again: other data');
  summary.search = {
    first_cache: first.json.metadata.cache,
    first_credits: first.json.metadata.credits_consumed,
    second_cache: second.json.metadata.cache,
    second_credits: second.json.metadata.credits_consumed,
  };
}

async function inviteOnce(config, account, profileUrl) {
  summary.step = 'invite';
  expect(profileUrl, 'no viewer with a profile_url to invite');
  const key = `app-client-${randomUUID()}`;
  const body = { account_id: account, action: 'invite', params: { profile_url: profileUrl, message: 'Thanks for viewing my profile.' } };
  const first = await call(config, 'POST', '/v2/network', body, { 'Idempotency-Key': key });
  expectOk(first, 'invite');
  expect(!first.replayed, 'invite: the first send cannot be a replay');
  // A write is never cached.
  expect(first.headers.get('x-cache') === null && !('cache' in first.json.metadata), 'invite: a write answered as cached');
  // The app's retry (say its first attempt timed out): same key, same request.
  const retry = await call(config, 'POST', '/v2/network', body, { 'Idempotency-Key': key });
  expectOk(retry, 'invite retry');
  expect(retry.replayed, 'invite retry: not answered as a replay (idempotent-replayed: true)');
  expect(retry.text === first.text, 'invite retry: the replay is not the first answer');
  summary.invite = { profile_url: profileUrl, status: first.status, replayed: retry.replayed, same_body: retry.text === first.text };
}

async function main() {
  const config = {
    base: env('VIEWGATE_URL').replace(/\/+$/, ''),
    key: env('VIEWGATE_KEY'),
    pageSize: positiveInt('VIEWGATE_PAGE_SIZE', 10),
    maxPages: positiveInt('VIEWGATE_MAX_PAGES', 100),
    timeoutMs: positiveInt('VIEWGATE_TIMEOUT_MS', 10000),
    keywords: env('VIEWGATE_SEARCH', 'product manager'),
  };
  const account = await listAccounts(config);
  const profileUrl = await pageViewers(config, account);
  await searchTwice(config, account);
  await inviteOnce(config, account, profileUrl);
  summary.step = 'done';
  summary.ok = true;
}

try {
  await main();
  console.log(JSON.stringify(summary));
} catch (error) {
  // Only our own messages are printed whole; anything else (a network
  // error, a timeout) by its name and message, which carry no key.
  summary.error = error instanceof Unexpected ? error.message : `${error.name}: ${error.message}`;
  console.log(JSON.stringify(summary));
  process.exitCode = 1;
}
