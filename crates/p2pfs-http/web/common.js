// p2pfs web UI — shared helpers and start-up. Plain ES2020, no dependencies.
// Every piece of data goes into the DOM through textContent / createElement.
'use strict';

const UI = {
  stopped: false,
  timers: [],
  events: null,
  role: null,
};

// ---------------------------------------------------------------- DOM helpers

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

/** Creates an element. props: class, text, title, dataset, on<event>, hidden, other attributes. */
function h(tag, props, ...children) {
  const e = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = String(v);
      else if (k === 'dataset') Object.assign(e.dataset, v);
      else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
      else if (k === 'hidden' || k === 'disabled') e[k] = Boolean(v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

/** Replaces an element's children, skipping null/false entries. */
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/** Sets text only when it changed (avoids needless layout and keeps selections). */
function setText(el, text) {
  const t = text === null || text === undefined ? '' : String(text);
  if (el.textContent !== t) el.textContent = t;
}

function setHidden(el, hidden) {
  if (el.hidden !== hidden) el.hidden = hidden;
}

/** Shows a message in an inline error element (empty hides it). */
function showError(el, msg) {
  if (!el) return;
  setText(el, msg || '');
  el.hidden = !msg;
}

/** An empty-state box: text with `code` spans written as `backticks`. */
function fillEmpty(el, text) {
  el.replaceChildren();
  const parts = String(text).split('`');
  parts.forEach((p, i) => {
    if (!p) return;
    el.append(i % 2 ? h('code', { text: p }) : document.createTextNode(p));
  });
  el.hidden = false;
}

/**
 * Keeps a tbody's rows in step with `items`, reusing rows by key so that
 * focus, button states and per-row results survive refreshes.
 */
function syncRows(tbody, items, keyOf, create, update) {
  const old = new Map();
  for (const tr of Array.from(tbody.rows)) old.set(tr.dataset.key, tr);
  const head = tbody.parentElement && tbody.parentElement.tHead;
  const labels = head && head.rows[0] ? Array.from(head.rows[0].cells, (th) => th.textContent.trim()) : [];
  let prev = null;
  for (const item of items) {
    const key = keyOf(item);
    let tr = old.get(key);
    if (tr) old.delete(key);
    else {
      tr = create(item);
      tr.dataset.key = key;
      labelCells(tr, labels);
    }
    update(tr, item);
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    prev = tr;
  }
  for (const tr of old.values()) tr.remove();
}

/** Copies column headers onto cells (data-label), for the stacked phone layout. */
function labelCells(tr, labels) {
  Array.from(tr.cells).forEach((c, i) => { if (labels[i] && !c.dataset.label) c.dataset.label = labels[i]; });
}

/** A table cell. */
function td(text, cls) {
  return h('td', { class: cls || null, text: text });
}

// ---------------------------------------------------------------- formatting

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

function fmtBytes(n) {
  if (n === null || n === undefined || !isFinite(n)) return '–';
  n = Number(n);
  if (n < 1024) return `${Math.round(n)} B`;
  let i = 0;
  while (n >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
  const digits = n < 10 ? 2 : n < 100 ? 1 : 0;
  return `${n.toFixed(digits)} ${UNITS[i]}`;
}

function fmtRate(bps) {
  if (!bps || !isFinite(bps) || bps <= 0) return '0 B/s';
  return `${fmtBytes(bps)}/s`;
}

function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return '–';
  s = Math.max(0, Number(s));
  if (s < 1) return '<1 s';
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 600) {
    const m = Math.floor(s / 60), r = Math.round(s % 60);
    return r ? `${m} min ${r} s` : `${m} min`;
  }
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) {
    const hr = Math.floor(s / 3600), m = Math.round((s % 3600) / 60);
    return m ? `${hr} h ${m} min` : `${hr} h`;
  }
  return `${Math.round(s / 86400)} d`;
}

/** "12 s ago" from a Unix timestamp in seconds. */
function fmtAgo(ts) {
  if (!ts) return '–';
  const s = Date.now() / 1000 - Number(ts);
  if (s < 5) return 'just now';
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function fmtDate(ts) {
  if (!ts) return '';
  try { return new Date(Number(ts) * 1000).toLocaleString(); } catch (_) { return ''; }
}

function fmtMs(ms) {
  const v = Number(ms);
  if (!isFinite(v)) return '–';
  const digits = v < 10 ? 2 : v < 100 ? 1 : 0;
  return `${v.toFixed(digits)} ms`;
}

function fmtCount(n, one, many) {
  return `${n} ${n === 1 ? one : (many || one + 's')}`;
}

function shortId(id) {
  if (!id) return '–';
  const s = String(id);
  return s.length > 10 ? s.slice(0, 8) + '…' : s;
}

function basename(path) {
  const parts = String(path).trim().replace(/[\\/]+$/, '').split(/[\\/]/);
  return parts[parts.length - 1] || '';
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

// ---------------------------------------------------------------- access token

/** The API access token for this browser session (asked for once, on a 401). */
const TOKEN_KEY = 'p2pfs-api-token';
function apiToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; }
}
function setApiToken(t) {
  try {
    if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
  } catch (_) { /* storage disabled: the token lives until reload */ }
}

/** Shows the sign-in card; resolves never (the page reloads after sign-in). */
function askForToken(wrong) {
  if (UI.events) UI.events.close();
  const input = h('input', {
    id: 'token-input', name: 'token', type: 'password', autocomplete: 'off',
    spellcheck: 'false', placeholder: 'access token', required: true,
  });
  const err = h('p', { class: 'form-error', role: 'alert', hidden: !wrong, text: wrong ? 'That token was refused. Check it and try again.' : '' });
  const form = h('form', { id: 'token-form', class: 'inline-form', novalidate: true },
    h('div', { class: 'field grow' }, h('label', { for: 'token-input', text: 'Access token' }), input),
    h('button', { type: 'submit', class: 'btn primary', text: 'Sign in' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = input.value.trim();
    if (!t) { showError(err, 'Paste the token the daemon printed when it started.'); return; }
    setApiToken(t);
    location.reload();
  });
  $('#app').replaceChildren(h('section', { class: 'card attention', id: 'token-card' },
    h('h2', { text: 'This daemon needs its access token' }),
    h('p', { class: 'help', text: 'Its API is reachable from other machines, so every request must carry the access token it printed at start-up (or was given with --http-token). The page keeps it until you close this tab.' }),
    form, err));
  setText($('#status'), '');
  input.focus();
  return new Promise(() => {});
}

/** Calls the daemon's API; throws ApiError with the server's message. */
async function api(path, opts = {}) {
  const method = opts.method || 'GET';
  const init = { method, headers: { Accept: 'application/json' }, cache: 'no-store' };
  const token = apiToken();
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (method !== 'GET') {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(opts.body === undefined ? {} : opts.body);
  }
  let ctl = null, timer = null;
  const timeout = opts.timeout === undefined ? (method === 'GET' ? 15000 : 0) : opts.timeout;
  if (timeout && typeof AbortController !== 'undefined') {
    ctl = new AbortController();
    init.signal = ctl.signal;
    timer = setTimeout(() => ctl.abort(), timeout);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (timer) clearTimeout(timer);
    if (e && e.name === 'AbortError') {
      throw new ApiError('timeout', 'The daemon did not answer in time.', 0);
    }
    throw new ApiError('network', 'Cannot reach the daemon — it may have stopped, or the network is down.', 0);
  }
  let text = '';
  try { text = await res.text(); } catch (_) { /* body lost */ }
  if (timer) clearTimeout(timer);
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (_) {
      if (!res.ok) throw new ApiError(`http_${res.status}`, `HTTP ${res.status}: ${text.slice(0, 200)}`, res.status);
      throw new ApiError('bad_json', 'The daemon sent an answer that is not JSON.', res.status);
    }
  }
  if (res.status === 401) {
    setApiToken('');
    return askForToken(Boolean(token));
  }
  if (!res.ok) {
    const err = data && data.error;
    throw new ApiError(
      (err && err.code) || `http_${res.status}`,
      (err && err.message) || `HTTP ${res.status} ${res.statusText || ''}`.trim(),
      res.status,
    );
  }
  return data;
}

function errText(e) {
  if (e instanceof ApiError) return e.message;
  return (e && e.message) || String(e);
}

/**
 * Wires a <form>: Enter submits, the submit button is disabled while busy, and
 * a thrown error's message is shown inline in errorEl.
 */
function bindForm(form, errorEl, handler) {
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (form.dataset.busy === '1') return;
    form.dataset.busy = '1';
    const buttons = $$('button[type="submit"]', form);
    const labels = buttons.map((b) => b.textContent);
    buttons.forEach((b) => { b.disabled = true; b.classList.add('busy'); });
    showError(errorEl, '');
    try {
      await handler();
    } catch (e) {
      showError(errorEl, errText(e));
    } finally {
      form.dataset.busy = '';
      buttons.forEach((b, i) => { b.disabled = false; b.classList.remove('busy'); b.textContent = labels[i]; });
    }
  });
}

/** Runs fn at most once per `interval` ms; calls during a run are coalesced into one more run. */
function coalesce(fn, interval) {
  let running = false, pending = false, last = 0, timer = null;
  async function run() {
    timer = null;
    running = true;
    pending = false;
    last = Date.now();
    try { await fn(); } catch (e) { console.warn(e); }
    running = false;
    if (pending) schedule();
  }
  function schedule() {
    if (UI.stopped) return;
    if (running) { pending = true; return; }
    if (timer) return;
    const wait = Math.max(0, last + interval - Date.now());
    timer = setTimeout(run, wait);
  }
  return schedule;
}

function every(ms, fn) {
  const id = setInterval(() => { if (!UI.stopped) fn(); }, ms);
  UI.timers.push(id);
  return id;
}

// ---------------------------------------------------------------- toasts

function toast(message, kind = 'info', ms = 5000) {
  const box = $('#toasts');
  const t = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('span', { class: 'toast-msg', text: message }),
    h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', text: '×' }));
  const close = () => { t.classList.add('leaving'); setTimeout(() => t.remove(), 200); };
  t.querySelector('.toast-close').addEventListener('click', close);
  box.append(t);
  while (box.children.length > 4) box.firstChild.remove();
  setTimeout(close, kind === 'error' ? Math.max(ms, 8000) : ms);
}

// ---------------------------------------------------------------- live events

/** Opens /api/events with handlers per event name; shows the banner when it keeps failing. */
function openEvents(handlers, onReconnect) {
  let es = null, failures = 0, retry = null, opened = false, lostSince = 0;
  const banner = $('#conn-banner');
  function setLost(lost) {
    if (UI.stopped) lost = false;
    setHidden(banner, !lost);
  }
  function connect() {
    if (UI.stopped) return;
    const token = apiToken();
    es = new EventSource(token ? `/api/events?token=${encodeURIComponent(token)}` : '/api/events');
    es.onopen = () => {
      const wasLost = failures > 0;
      failures = 0;
      lostSince = 0;
      setLost(false);
      if (opened && wasLost && onReconnect) onReconnect();
      opened = true;
    };
    es.onerror = () => {
      if (UI.stopped) { es.close(); return; }
      failures++;
      if (!lostSince) lostSince = Date.now();
      if (failures >= 2) setLost(true);
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. an HTTP error): retry ourselves, backing off.
        clearTimeout(retry);
        retry = setTimeout(connect, Math.min(10000, 1000 * failures));
      }
    };
    for (const [name, fn] of Object.entries(handlers)) {
      es.addEventListener(name, (ev) => {
        let data = null;
        try { data = ev.data ? JSON.parse(ev.data) : null; } catch (_) { return; }
        try { fn(data); } catch (e) { console.error(e); }
      });
    }
  }
  connect();
  // A connection that stays in "connecting" for long is lost too.
  every(2000, () => {
    if (lostSince && Date.now() - lostSince > 4000) setLost(true);
  });
  UI.events = { close() { clearTimeout(retry); if (es) es.close(); } };
  return UI.events;
}

// ---------------------------------------------------------------- chunk cells

const MAX_CELLS = 2048;

/**
 * Renders `n` chunks into `container` as .cell elements, bucketing when n is
 * large. valueOf(i) gives chunk i's value; a bucket shows its minimum.
 * paint(cell, value) colours a cell. Cells are reused across calls.
 * Returns the bucket size (chunks per cell).
 */
function renderCells(container, n, valueOf, paint, describe) {
  const bucket = n > MAX_CELLS ? Math.ceil(n / MAX_CELLS) : 1;
  const cells = bucket > 0 ? Math.ceil(n / bucket) : 0;
  const size = cells <= 24 ? 24 : cells <= 64 ? 20 : cells <= 160 ? 16 : cells <= 512 ? 12 : cells <= 1200 ? 9 : 7;
  container.style.setProperty('--cell', `${size}px`);
  container.style.setProperty('--gap', size >= 12 ? '3px' : size >= 9 ? '2px' : '1px');
  while (container.children.length > cells) container.lastChild.remove();
  while (container.children.length < cells) container.append(h('span', { class: 'cell' }));
  const kids = container.children;
  for (let c = 0; c < cells; c++) {
    const from = c * bucket, to = Math.min(n, from + bucket);
    let v = Infinity;
    for (let i = from; i < to; i++) { const x = valueOf(i); if (x < v) v = x; }
    if (v === Infinity) v = 0;
    const cell = kids[c];
    const sv = String(v);
    if (cell.dataset.count !== sv) {
      cell.dataset.count = sv;
      paint(cell, v);
      cell.title = describe(from, to - 1, v);
    } else if (!cell.title) {
      cell.title = describe(from, to - 1, v);
    }
  }
  return bucket;
}

function chunkRange(from, to) {
  return from === to ? `chunk ${from}` : `chunks ${from}–${to}`;
}

// ---------------------------------------------------------------- exit / stopped

function showStopped(detail) {
  UI.stopped = true;
  UI.timers.forEach((id) => clearInterval(id));
  if (UI.events) UI.events.close();
  setHidden($('#conn-banner'), true);
  $('#app').hidden = true;
  if (detail) setText($('#stopped-detail'), detail);
  $('#stopped').hidden = false;
  const st = $('#status');
  st.replaceChildren(h('span', { class: 'chip' }, h('span', { class: 'dot off' }), 'stopped'));
  document.title = `p2pfs ${UI.role || ''} — stopped`.replace('  ', ' ');
  $('#stopped-reload').focus();
}

/** The inline "are you sure?" exit flow shared by both roles. */
function bindExit(what) {
  const btn = $('#exit-btn'), box = $('#exit-confirm-box');
  const yes = $('#exit-confirm'), no = $('#exit-cancel'), err = $('#exit-error');
  btn.addEventListener('click', () => {
    box.hidden = false;
    btn.hidden = true;
    showError(err, '');
    yes.focus();
  });
  no.addEventListener('click', () => {
    box.hidden = true;
    btn.hidden = false;
    btn.focus();
  });
  yes.addEventListener('click', async () => {
    yes.disabled = true; no.disabled = true;
    setText(yes, 'Stopping…');
    try {
      await api('/api/exit', { method: 'POST', body: {} });
      showStopped(`The ${what} left the network and exited. Start it again from a terminal, then reload this page.`);
    } catch (e) {
      showError(err, errText(e));
      yes.disabled = false; no.disabled = false;
      setText(yes, 'Yes, try again');
    }
  });
}

// ---------------------------------------------------------------- start-up

function mount(templateId) {
  const app = $('#app');
  app.replaceChildren($(`#${templateId}`).content.cloneNode(true));
}

function setRoleBadge(role) {
  const b = $('#role-badge');
  b.textContent = role;
  b.className = `role-badge ${role}`;
  b.hidden = false;
  document.body.dataset.role = role;
}

async function boot() {
  $('#stopped-reload').addEventListener('click', () => location.reload());
  let status;
  try {
    status = await api('/api/status');
  } catch (e) {
    const app = $('#app');
    const retry = h('button', { type: 'button', class: 'btn primary', text: 'Try again', onclick: () => location.reload() });
    app.replaceChildren(h('section', { class: 'card fatal' },
      h('h2', { text: 'Cannot load the daemon\'s status' }),
      h('p', { class: 'form-error', role: 'alert', text: errText(e) }),
      retry));
    setText($('#status'), '');
    return;
  }
  UI.role = status.role;
  if (status.role === 'tracker' && typeof initTracker === 'function') initTracker(status);
  else if (status.role === 'peer' && typeof initPeer === 'function') initPeer(status);
  else {
    $('#app').replaceChildren(h('section', { class: 'card fatal' },
      h('h2', { text: 'Unknown daemon role' }),
      h('p', { text: `The daemon reports the role "${status.role}", which this page does not know.` })));
  }
}

document.addEventListener('DOMContentLoaded', boot);
