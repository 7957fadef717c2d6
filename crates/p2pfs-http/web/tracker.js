// p2pfs web UI — the tracker page.
'use strict';

function initTracker(initialStatus) {
  mount('tpl-tracker');
  setRoleBadge('tracker');

  const S = {
    status: initialStatus,
    peers: [],
    files: [],
    contents: [],
    selected: null,      // content id shown in the chunk map
    detail: null,        // GET /api/chunks/{id}
    rtt: new Map(),      // addr -> {text, error}
    pinging: new Set(),
  };
  const dark = window.matchMedia ? window.matchMedia('(prefers-color-scheme: dark)') : null;

  // ------------------------------------------------------------ status

  function renderStatus() {
    const st = S.status;
    const box = $('#status');
    const chips = [];
    if (st.listening) {
      chips.push(h('span', { class: 'chip' }, h('span', { class: 'dot on' }), 'listening on ', h('code', { text: st.listening })));
    } else {
      chips.push(h('span', { class: 'chip warn' }, h('span', { class: 'dot warn' }), 'not started'));
    }
    chips.push(h('span', { class: 'chip', text: fmtCount(st.peers || 0, 'peer') }));
    chips.push(h('span', { class: 'chip', text: fmtCount(st.files || 0, 'file') }));
    fill(box, ...chips);
    document.title = st.listening ? `p2pfs tracker — ${st.listening}` : 'p2pfs tracker — not started';
    setHidden($('#start-card'), Boolean(st.listening));
    setText($('#daemon-info'), `p2pfs ${st.version || ''} · ${st.listening ? `peers connect to ${st.listening}` : 'not serving yet'}`);
  }

  async function loadStatus() {
    S.status = await api('/api/status');
    renderStatus();
  }

  // ------------------------------------------------------------ peers

  /** The address peers should use: a wildcard listen address becomes a placeholder. */
  function connectHint(listening) {
    return String(listening).replace(/^(0\.0\.0\.0|\[::\])(?=:)/, 'THIS_MACHINE_IP');
  }

  function renderPeers(err) {
    const tbody = $('#peers tbody');
    const empty = $('#peers-empty');
    const rows = err ? [] : S.peers.slice().sort((a, b) => a.addr.localeCompare(b.addr, undefined, { numeric: true }));
    syncRows(tbody, rows, (p) => p.addr, createPeerRow, updatePeerRow);
    setText($('#peers-count'), rows.length ? String(rows.length) : '');
    setHidden($('#peers').closest('.table-wrap'), rows.length === 0);
    if (err) fillEmpty(empty, err);
    else if (!S.status.listening) fillEmpty(empty, 'The tracker is not started yet. Start it above; this page then shows the command peers join with.');
    else if (!rows.length) fillEmpty(empty, `No peers online yet. Start a peer on any machine with \`${S.status.join || `p2pfs peer --tracker ${connectHint(S.status.listening)}`}\`.`);
    else empty.hidden = true;
  }

  function createPeerRow(p) {
    const tr = h('tr', { dataset: { addr: p.addr } },
      h('td', { class: 'mono addr' }),
      h('td', { class: 'mono id' }),
      h('td', { class: 'num published' }),
      h('td', { class: 'num holding' }),
      h('td', { class: 'since' }),
      h('td', { class: 'rtt mono', 'aria-live': 'polite' }),
      h('td', { class: 'action' }, h('button', { type: 'button', class: 'btn small ping-btn', text: 'Ping' })));
    tr.querySelector('.ping-btn').addEventListener('click', () => ping(tr.dataset.addr, tr));
    return tr;
  }

  function updatePeerRow(tr, p) {
    tr.dataset.addr = p.addr;
    setText(tr.querySelector('.addr'), p.addr);
    const id = tr.querySelector('.id');
    setText(id, shortId(p.peer_id));
    id.title = p.peer_id || '';
    setText(tr.querySelector('.published'), p.published);
    setText(tr.querySelector('.holding'), p.holding);
    const since = tr.querySelector('.since');
    setText(since, fmtAgo(p.connected_since));
    since.title = fmtDate(p.connected_since);
    since.dataset.ts = p.connected_since;
    const r = S.rtt.get(p.addr);
    const rtt = tr.querySelector('.rtt');
    setText(rtt, r ? r.text : '');
    rtt.classList.toggle('error', Boolean(r && r.error));
    const btn = tr.querySelector('.ping-btn');
    btn.disabled = S.pinging.has(p.addr);
    btn.setAttribute('aria-label', `Ping ${p.addr}`);
  }

  async function ping(addr, tr) {
    const btn = tr.querySelector('.ping-btn');
    const cell = tr.querySelector('.rtt');
    S.pinging.add(addr);
    btn.disabled = true;
    cell.classList.remove('error');
    setText(cell, 'pinging…');
    let r;
    try {
      const res = await api('/api/ping', { method: 'POST', body: { addr } });
      r = { text: fmtMs(res.rtt_ms), error: false };
    } catch (e) {
      r = { text: errText(e), error: true };
    }
    S.pinging.delete(addr);
    S.rtt.set(addr, r);
    // The row may have been re-created meanwhile: look it up again.
    const row = [...$('#peers tbody').rows].find((x) => x.dataset.addr === addr) || tr;
    const c = row.querySelector('.rtt');
    setText(c, r.text);
    c.classList.toggle('error', r.error);
    row.querySelector('.ping-btn').disabled = false;
  }

  async function loadPeers() {
    try {
      const r = await api('/api/peers');
      S.peers = r.peers || [];
      renderPeers();
    } catch (e) {
      S.peers = [];
      renderPeers(e.code === 'not_started' ? null : errText(e));
    }
  }

  // ------------------------------------------------------------ files

  function renderFiles(err) {
    const tbody = $('#files tbody');
    const empty = $('#files-empty');
    const rows = err ? [] : S.files;
    syncRows(tbody, rows, (f) => `${f.publisher_id}/${f.name}`, createFileRow, updateFileRow);
    setText($('#files-count'), rows.length ? String(rows.length) : '');
    setHidden($('#files').closest('.table-wrap'), rows.length === 0);
    if (err) fillEmpty(empty, err);
    else if (!S.status.listening) fillEmpty(empty, 'No files: the tracker is not started yet.');
    else if (!rows.length) fillEmpty(empty, 'No files published yet. On a peer, publish one with the web UI or `publish PATH NAME`.');
    else empty.hidden = true;
  }

  function createFileRow(f) {
    return h('tr', { dataset: { name: f.name } },
      h('td', { class: 'name' }),
      h('td', { class: 'publisher' }),
      h('td', { class: 'num size' }),
      h('td', { class: 'num chunks' }),
      h('td', { class: 'num sources' }),
      h('td', { class: 'num seeders' }));
  }

  function updateFileRow(tr, f) {
    tr.dataset.name = f.name;
    tr.dataset.contentId = f.content_id;
    const name = tr.querySelector('.name');
    setText(name, f.name);
    name.title = `content ${f.content_id}`;
    const pub = tr.querySelector('.publisher');
    fill(pub, h('span', { class: 'mono', text: f.publisher }),
      f.publisher_online ? null : h('span', { class: 'tag muted-tag', text: 'offline', title: 'The publisher is offline; other holders may still serve it' }));
    pub.title = `peer ${f.publisher_id}`;
    setText(tr.querySelector('.size'), fmtBytes(f.size));
    tr.querySelector('.size').title = `${f.size} bytes in chunks of ${fmtBytes(f.chunk_size)}`;
    setText(tr.querySelector('.chunks'), f.chunks);
    setText(tr.querySelector('.sources'), f.sources);
    const seed = tr.querySelector('.seeders');
    setText(seed, f.seeders);
    seed.classList.toggle('warn-text', f.seeders === 0);
  }

  async function loadFiles() {
    try {
      const r = await api('/api/files');
      S.files = r.files || [];
      renderFiles();
    } catch (e) {
      S.files = [];
      renderFiles(e.code === 'not_started' ? null : errText(e));
    }
  }

  // ------------------------------------------------------------ chunk map

  function contentLabel(c) {
    const names = [...new Set((c.names || []).map((n) => n.name))];
    const label = names.length ? names.join(', ') : `unnamed ${shortId(c.content_id)}`;
    return `${label} — ${fmtCount(c.chunks, 'chunk')}`;
  }

  function renderSelect() {
    const sel = $('#chunkmap-select');
    const ids = S.contents.map((c) => c.content_id);
    if (!S.selected || !ids.includes(S.selected)) S.selected = ids[0] || null;
    // Rebuild options only when the list or labels changed (keeps an open dropdown steady).
    const want = S.contents.map((c) => `${c.content_id}\u0000${contentLabel(c)}`).join('\u0001');
    if (sel.dataset.sig !== want) {
      sel.dataset.sig = want;
      fill(sel, ...S.contents.map((c) => h('option', { value: c.content_id, text: contentLabel(c) })));
    }
    if (S.selected && sel.value !== S.selected) sel.value = S.selected;
    sel.disabled = ids.length === 0;
    setHidden(sel.closest('.field'), ids.length === 0);
  }

  function countColor(c, max) {
    const t = max <= 1 ? 1 : (c - 1) / (max - 1);
    const isDark = dark && dark.matches;
    // light: pale sky -> deep blue; dark: deep blue -> bright cyan
    const [h0, s0, l0, h1, s1, l1] = isDark ? [222, 55, 32, 190, 90, 62] : [200, 85, 80, 224, 76, 40];
    const hue = h0 + (h1 - h0) * t, sat = s0 + (s1 - s0) * t, lig = l0 + (l1 - l0) * t;
    return `hsl(${hue.toFixed(0)} ${sat.toFixed(0)}% ${lig.toFixed(0)}%)`;
  }

  function renderChunkMap(err) {
    const map = $('#chunkmap'), legend = $('#chunkmap-legend'), empty = $('#chunkmap-empty');
    const summary = $('#chunkmap-summary'), holders = $('#chunkmap-holders');
    const d = S.detail;
    if (err || !d || !S.selected) {
      fill(map); fill(legend); fill(holders);
      setText(summary, '');
      map.hidden = true;
      if (err) fillEmpty(empty, err);
      else if (!S.contents.length) fillEmpty(empty, S.status.listening ? 'Nothing to show yet: no peer holds any file. Publish a file on a peer and it appears here.' : 'Start the tracker to see how files spread through the swarm.');
      else fillEmpty(empty, 'Loading…');
      return;
    }
    empty.hidden = true;
    map.hidden = false;
    const counts = d.counts || [];
    const n = counts.length || d.chunks || 0;
    let max = Math.max(1, (d.holders || []).length);
    for (const c of counts) if (c > max) max = c;
    // The colour scale depends on max: repaint every cell when it changes.
    const scale = `${max}|${dark && dark.matches}`;
    if (map.dataset.scale !== scale) { map.dataset.scale = scale; fill(map); }
    const bucket = renderCells(map, n, (i) => counts[i] || 0,
      (cell, v) => { cell.style.background = v > 0 ? countColor(v, max) : ''; },
      (from, to, v) => `${chunkRange(from, to)}: ${from === to ? '' : 'at least '}${fmtCount(v, 'peer')}`);
    map.setAttribute('aria-label', `Chunk map of ${n} chunks`);

    const held = counts.filter((c) => c > 0).length;
    const complete = (d.holders || []).filter((x) => x.complete).length;
    const parts = [fmtCount(n, 'chunk'), fmtCount((d.holders || []).length, 'holder'),
      `${n ? Math.floor((held / n) * 100) : 0}% available`, fmtCount(complete, 'seeder')];
    if (bucket > 1) parts.push(`each square = ${bucket} chunks (colour = the least-held chunk)`);
    setText(summary, parts.join(' · '));

    // Legend: 0, then 1..max (or a few steps when many).
    const steps = max <= 8 ? Array.from({ length: max }, (_, i) => i + 1)
      : [1, Math.round(max / 4), Math.round(max / 2), Math.round((3 * max) / 4), max].filter((v, i, a) => a.indexOf(v) === i);
    if (legend.dataset.sig !== scale) {
      legend.dataset.sig = scale;
      fill(legend,
        h('span', { class: 'legend-title', text: 'Peers holding a chunk:' }),
        h('span', { class: 'legend-item' }, h('span', { class: 'cell swatch', dataset: { count: '0' } }), '0'),
        ...steps.map((v) => {
          const sw = h('span', { class: 'cell swatch' });
          sw.style.background = countColor(v, max);
          return h('span', { class: 'legend-item' }, sw, String(v));
        }));
    }

    // Holders list.
    const hs = (d.holders || []).slice().sort((a, b) => b.have - a.have || a.addr.localeCompare(b.addr));
    fill(holders, ...(hs.length ? [h('h3', { text: 'Holders' }), h('ul', { class: 'holder-list' }, ...hs.map((x) => {
      const pct = d.chunks ? (x.have / d.chunks) * 100 : 0;
      const bar = h('span', { class: 'mini-bar' }, h('span'));
      bar.firstChild.style.width = `${pct}%`;
      return h('li', {},
        h('span', { class: 'mono', text: x.addr, title: `peer ${x.peer_id}` }),
        bar,
        h('span', { class: 'muted num', text: `${x.have}/${d.chunks}` }),
        x.complete ? h('span', { class: 'tag ok-tag', text: 'seeder' }) : null);
    }))] : []));
  }

  async function loadChunks() {
    let list;
    try {
      list = await api('/api/chunks');
    } catch (e) {
      S.contents = []; S.detail = null;
      renderSelect();
      renderChunkMap(e.code === 'not_started' ? null : errText(e));
      return;
    }
    S.contents = list.contents || [];
    renderSelect();
    await loadDetail();
  }

  async function loadDetail() {
    const id = S.selected;
    if (!id) { S.detail = null; renderChunkMap(); return; }
    try {
      const d = await api(`/api/chunks/${encodeURIComponent(id)}`);
      if (S.selected !== id) return;
      S.detail = d;
      renderChunkMap();
    } catch (e) {
      if (S.selected !== id) return;
      if (e.code === 'not_found') { S.detail = null; refresh(); return; }
      S.detail = null;
      renderChunkMap(errText(e));
    }
  }

  $('#chunkmap-select').addEventListener('change', (ev) => {
    S.selected = ev.target.value || null;
    S.detail = null;
    $('#chunkmap').replaceChildren();
    loadDetail();
  });
  if (dark && dark.addEventListener) {
    dark.addEventListener('change', () => { $('#chunkmap').replaceChildren(); renderChunkMap(); });
  }

  // ------------------------------------------------------------ forms

  bindForm($('#start-form'), $('#start-error'), async () => {
    const addr = $('#start-addr').value.trim();
    if (!addr) throw new Error('Enter an address to listen on, e.g. 0.0.0.0:7000.');
    const r = await api('/api/start', { method: 'POST', body: { addr } });
    S.status.listening = r.listening;
    renderStatus();
    toast(`Tracker listening on ${r.listening}`, 'ok');
    await refreshAll();
  });

  bindForm($('#discover-form'), null, async () => {
    await discover($('#discover-addr').value.trim(), $('#discover-result'));
  });

  // Clicking a peer's address fills the discover form.
  $('#peers tbody').addEventListener('click', (ev) => {
    const cell = ev.target.closest('td.addr');
    if (!cell) return;
    $('#discover-addr').value = cell.textContent;
  });

  bindExit('tracker');

  // ------------------------------------------------------------ live

  async function refreshAll() {
    await loadStatus().catch(() => {});
    await Promise.all([loadPeers(), loadFiles(), loadChunks()]);
  }
  const refresh = coalesce(refreshAll, 1000);

  renderStatus();
  refreshAll();
  openEvents({ changed: () => refresh() }, () => refresh());
  // Relative times ("12 s ago") and a slow safety poll.
  every(5000, () => {
    for (const c of $$('#peers td.since')) setText(c, fmtAgo(Number(c.dataset.ts)));
  });
  every(15000, () => { if (!document.hidden) refresh(); });
}

/** Discover form shared by both roles: renders a peer's published files. */
async function discover(addr, out, extra) {
  if (!addr) throw new Error('Enter a peer address, e.g. 127.0.0.1:40001.');
  fill(out, h('p', { class: 'muted', text: `Asking ${addr}…` }));
  let r;
  try {
    r = await api(`/api/discover?addr=${encodeURIComponent(addr)}`);
  } catch (e) {
    fill(out, h('p', { class: 'form-error', role: 'alert', text: errText(e) }));
    return;
  }
  const files = r.files || [];
  const head = h('p', { class: 'discover-head' },
    h('span', { class: 'mono', text: r.addr }), ' · peer ',
    h('span', { class: 'mono', title: r.peer_id, text: shortId(r.peer_id) }), ' · ',
    fmtCount(files.length, 'file'));
  if (!files.length) {
    fill(out, head, h('div', { class: 'empty', text: 'This peer has not published any files.' }));
    return;
  }
  const table = h('table', { class: 'data' },
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col', text: 'Name' }), h('th', { scope: 'col', class: 'num', text: 'Size' }),
      h('th', { scope: 'col', class: 'num', text: 'Chunks' }), h('th', { scope: 'col', text: 'Path' }),
      extra ? h('th', { scope: 'col' }, h('span', { class: 'sr-only', text: 'Action' })) : null)),
    h('tbody', {}, ...files.map((f) => h('tr', { dataset: { name: f.name } },
      h('td', { class: 'name', text: f.name, title: `content ${f.content_id}` }),
      td(fmtBytes(f.size), 'num'),
      td(f.chunks, 'num'),
      h('td', { class: 'mono path', text: f.path }),
      extra ? h('td', { class: 'action' }, extra(f, r)) : null))));
  const labels = ['Name', 'Size', 'Chunks', 'Path'];
  for (const tr of table.tBodies[0].rows) labelCells(tr, labels);
  fill(out, head, h('div', { class: 'table-wrap' }, table));
}
