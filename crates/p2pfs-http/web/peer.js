// p2pfs web UI — the peer page.
'use strict';

function initPeer(initialStatus) {
  mount('tpl-peer');
  setRoleBadge('peer');

  const S = {
    status: initialStatus,
    files: [],
    filesError: null,
    repo: null,
    downloads: new Map(),   // id -> download
    cards: new Map(),       // id -> card element
    have: new Map(),        // id -> {inflight, last, final}
    toasted: new Set(),     // ids whose end was announced
  };

  // ------------------------------------------------------------ status

  function renderStatus() {
    const st = S.status;
    const box = $('#status');
    const addr = st.advertised || st.listen;
    const addrChip = h('span', { class: 'chip', title: `listening on ${st.listen}${st.advertised ? `, advertised to others as ${st.advertised}` : ''}` },
      'peer ', h('code', { text: addr || '–' }));
    const idChip = h('span', { class: 'chip', title: `peer id ${st.peer_id}` }, 'id ', h('code', { text: shortId(st.peer_id) }));
    const trackerChip = st.tracker
      ? h('span', { class: 'chip ok' }, h('span', { class: 'dot on' }), 'connected to ', h('code', { text: st.tracker }))
      : h('span', { class: 'chip warn' }, h('span', { class: 'dot warn' }), 'not connected');
    const upChip = h('span', { class: 'chip', title: `${st.uploaded_bytes} bytes in ${st.chunks_served} chunks` },
      '↑ ', fmtBytes(st.uploaded_bytes || 0), ' uploaded');
    const listenChip = st.advertised && st.listen && st.listen !== st.advertised
      ? h('span', { class: 'chip', title: 'where this peer accepts chunk requests' }, 'listening ', h('code', { text: st.listen }))
      : null;
    fill(box, addrChip, listenChip, idChip, trackerChip, upChip);
    document.title = `p2pfs peer — ${addr || ''}`;

    // Connect card: prominent at the top when not connected, tucked into the side column otherwise.
    const card = $('#connect-card');
    if (st.tracker) {
      card.classList.remove('attention');
      setText($('#connect-title'), 'Tracker');
      const help = $('#connect-help');
      fill(help, 'Connected to ', h('code', { text: st.tracker }), '. To use another tracker, enter its address.');
      const side = $('.col-side');
      if (card.parentElement !== side) side.insertBefore(card, $('#settings-card'));
      setText($('#connect-submit'), 'Connect');
    } else {
      card.classList.add('attention');
      setText($('#connect-title'), 'Connect to a tracker');
      $('#connect-help').replaceChildren('This peer is not connected to a tracker yet. Enter the tracker\'s address (printed when it started, e.g. ',
        h('code', { text: '127.0.0.1:7000' }), ') to see and share files.');
      const main = $('.col-main');
      if (card.parentElement !== main || main.firstElementChild !== card) main.insertBefore(card, main.firstElementChild);
    }
    setText($('#delay-current'), `${Number(st.delay_secs || 0)} s`);
    const delay = $('#delay-seconds');
    if (document.activeElement !== delay && !delay.dataset.dirty) delay.value = String(Number(st.delay_secs || 0));
    setText($('#repo-path'), st.repo || '–');
  }

  async function loadStatus() {
    S.status = await api('/api/status');
    renderStatus();
  }

  // ------------------------------------------------------------ network files

  function repoContentIds() {
    const ids = new Set();
    if (S.repo) for (const f of S.repo.fetched || []) ids.add(f.content_id);
    return ids;
  }

  function runningContentIds() {
    const ids = new Set();
    for (const d of S.downloads.values()) if (d.state === 'running') ids.add(d.content_id);
    return ids;
  }

  function renderNetwork() {
    const tbody = $('#network-files tbody');
    const empty = $('#network-empty');
    const rows = S.filesError ? [] : S.files;
    const counts = new Map();
    for (const f of rows) counts.set(f.name, (counts.get(f.name) || 0) + 1);
    const inRepo = repoContentIds();
    const running = runningContentIds();
    syncRows(tbody, rows, (f) => `${f.publisher_id}/${f.name}`, createNetRow,
      (tr, f) => updateNetRow(tr, f, counts.get(f.name) > 1, inRepo, running));
    setText($('#network-count'), rows.length ? String(rows.length) : '');
    setHidden($('#network-files').closest('.table-wrap'), rows.length === 0);
    if (S.filesError) fillEmpty(empty, S.filesError);
    else if (!rows.length) fillEmpty(empty, 'No files on the network yet. Publish one with “Publish a file”, or wait for other peers to.');
    else empty.hidden = true;
  }

  function createNetRow(f) {
    const tr = h('tr', { dataset: { name: f.name } },
      h('td', { class: 'name' }),
      h('td', { class: 'publisher' }),
      h('td', { class: 'num size' }),
      h('td', { class: 'num chunks' }),
      h('td', { class: 'num sources' }),
      h('td', { class: 'num seeders' }),
      h('td', { class: 'action' }));
    return tr;
  }

  function updateNetRow(tr, f, ambiguous, inRepo, running) {
    tr.dataset.name = f.name;
    tr.dataset.contentId = f.content_id;
    tr.dataset.publisher = f.publisher;
    tr.dataset.ambiguous = ambiguous ? '1' : '';
    const name = tr.querySelector('.name');
    fill(name, h('span', { text: f.name, title: `content ${f.content_id}` }));
    const pub = tr.querySelector('.publisher');
    fill(pub, h('span', { class: 'mono', text: f.publisher, title: `peer ${f.publisher_id}` }),
      f.publisher_online ? null : h('span', { class: 'tag muted-tag', text: 'offline' }));
    const size = tr.querySelector('.size');
    setText(size, fmtBytes(f.size));
    size.title = `${f.size} bytes`;
    setText(tr.querySelector('.chunks'), f.chunks);
    setText(tr.querySelector('.sources'), f.sources);
    const seed = tr.querySelector('.seeders');
    setText(seed, f.seeders);
    seed.classList.toggle('warn-text', f.seeders === 0);

    const action = tr.querySelector('.action');
    if (f.own) {
      if (!action.querySelector('.own-tag')) fill(action, h('span', { class: 'tag own-tag', text: 'yours', title: 'You published this file' }));
      return;
    }
    // Content this peer already holds cannot be fetched again (the peer
    // refuses), so it gets a tag instead of a button that can only fail.
    if (inRepo.has(f.content_id)) {
      if (!action.querySelector('.have-tag')) fill(action, h('span', { class: 'tag ok-tag have-tag', text: 'in repo', title: 'You already hold this content: see Your repository' }));
      return;
    }
    let btn = action.querySelector('.fetch-btn');
    if (!btn) {
      btn = h('button', { type: 'button', class: 'btn small primary fetch-btn', text: 'Fetch' });
      btn.addEventListener('click', () => fetchFile(tr));
      fill(action, btn);
    }
    btn.setAttribute('aria-label', `Fetch ${f.name} from ${f.publisher}`);
    const busy = running.has(f.content_id) || btn.dataset.busy === '1';
    btn.disabled = busy;
    setText(btn, busy ? 'Fetching…' : 'Fetch');
  }

  async function loadFiles() {
    try {
      const r = await api('/api/files');
      S.files = r.files || [];
      S.filesError = null;
    } catch (e) {
      S.files = [];
      S.filesError = e.code === 'not_connected'
        ? 'Not connected to a tracker — connect above to see the network\'s files.'
        : errText(e);
    }
    renderNetwork();
  }

  async function fetchFile(tr) {
    const name = tr.dataset.name;
    const btn = tr.querySelector('.fetch-btn');
    const err = $('#fetch-error');
    showError(err, '');
    const body = { name };
    const dest = $('#fetch-dest').value.trim();
    const from = $('#fetch-from').value.trim() || (tr.dataset.ambiguous ? tr.dataset.publisher : '');
    if (dest) body.dest = dest;
    if (from) body.from = from;
    btn.dataset.busy = '1';
    btn.disabled = true;
    setText(btn, 'Starting…');
    try {
      const d = await api('/api/fetch', { method: 'POST', body });
      $('#fetch-dest').value = '';
      upsertDownload(d, true);
      toast(`Fetching ${d.name || name}…`, 'info', 3000);
    } catch (e) {
      showError(err, `Cannot fetch ${name}: ${errText(e)}`);
    } finally {
      btn.dataset.busy = '';
      renderNetwork();
      refreshFiles();
    }
  }

  // ------------------------------------------------------------ downloads

  function createCard(d) {
    const id = String(d.id);
    const card = h('article', { class: 'download', dataset: { id } },
      h('div', { class: 'dl-head' },
        h('div', { class: 'dl-title' },
          h('strong', { class: 'dl-name' }),
          h('span', { class: 'dl-from muted' })),
        h('span', { class: 'state badge' })),
      h('div', { class: 'dl-progress' },
        h('progress', { max: '100', value: '0' }),
        h('span', { class: 'percent' })),
      h('div', { class: 'dl-meta' },
        h('span', { class: 'dl-bytes' }),
        h('span', { class: 'dl-rate' }),
        h('span', { class: 'dl-eta' }),
        h('span', { class: 'dl-sources' })),
      h('p', { class: 'dl-error form-error', role: 'alert', hidden: true }),
      h('div', { class: 'dlmap-wrap' },
        h('div', { class: 'cells dlmap', role: 'img' }),
        h('p', { class: 'dlmap-note hint', hidden: true })),
      h('div', { class: 'dl-foot' },
        h('span', { class: 'dl-dest mono' }),
        h('button', { type: 'button', class: 'btn small danger-outline cancel-btn', text: 'Cancel' }),
        h('button', { type: 'button', class: 'btn small resume-btn', text: 'Resume', hidden: true })));
    card.querySelector('.cancel-btn').addEventListener('click', () => cancelDownload(id, card));
    card.querySelector('.resume-btn').addEventListener('click', () => resumeDownload(id, card));
    return card;
  }

  function placeCard(card, id, isNew) {
    const box = $('#downloads');
    if (isNew) { box.prepend(card); return; }
    // Keep newest (largest numeric id) first.
    const n = Number(id);
    let before = null;
    for (const other of box.children) {
      const m = Number(other.dataset.id);
      if (isFinite(n) && isFinite(m) && m < n) { before = other; break; }
    }
    box.insertBefore(card, before);
  }

  function upsertDownload(d, isNew) {
    if (!d || d.id === undefined || d.id === null) return;
    const id = String(d.id);
    const prev = S.downloads.get(id);
    // Snapshots can arrive out of order (the fetch answer after the first
    // events): never go back from done, nor back in time. Cancelled and
    // failed downloads may run again (resume).
    if (prev && prev.state === 'done' && d.state === 'running') return;
    if (prev && prev.state === d.state && Number(d.elapsed_secs) < Number(prev.elapsed_secs)) return;
    S.downloads.set(id, d);
    let card = S.cards.get(id);
    if (!card) {
      card = createCard(d);
      S.cards.set(id, card);
      placeCard(card, id, isNew);
    }
    updateCard(card, d);
    maybeLoadHave(id, d);
    if (!prev || prev.state !== d.state) renderNetwork();
    renderDownloadsMeta();
    // An end seen through the downloads list (the `ended` event may have been missed).
    if (d.state !== 'running' && ((prev && prev.state === 'running') || (!prev && isNew))) announceEnd(d);
  }

  function renderDownloadsMeta() {
    const n = S.downloads.size;
    const running = [...S.downloads.values()].filter((d) => d.state === 'running').length;
    setText($('#downloads-count'), n ? (running ? `${running} running · ${n}` : String(n)) : '');
    setHidden($('#downloads-empty'), n > 0);
  }

  function updateCard(card, d) {
    setText(card.querySelector('.dl-name'), d.name);
    card.querySelector('.dl-name').title = `content ${d.content_id}`;
    const from = card.querySelector('.dl-from');
    setText(from, d.publisher ? `by ${d.publisher}` : '');
    from.title = d.publisher ? `published by ${d.publisher}` : '';
    const state = card.querySelector('.state');
    setText(state, d.state);
    state.className = `state badge ${d.state}`;
    card.dataset.state = d.state;

    const pct = d.state === 'done' ? 100 : Math.max(0, Math.min(100, Number(d.percent) || 0));
    const prog = card.querySelector('progress');
    if (Number(prog.value) !== pct) prog.value = pct;
    prog.setAttribute('aria-label', `${d.name}: ${Math.floor(pct)}%`);
    setText(card.querySelector('.percent'), `${d.state === 'done' ? 100 : Math.floor(pct)}%`);

    const running = d.state === 'running';
    setText(card.querySelector('.dl-bytes'), d.state === 'done'
      ? fmtBytes(d.bytes_total)
      : `${fmtBytes(d.bytes_done)} of ${fmtBytes(d.bytes_total)}`);
    // What this run fetched: a resumed download had part of the file already.
    const avg = d.elapsed_secs > 0 ? Math.max(0, d.bytes_done - (d.bytes_at_start || 0)) / d.elapsed_secs : 0;
    setText(card.querySelector('.dl-rate'), running ? fmtRate(d.rate) : (avg > 0 ? `avg ${fmtRate(avg)}` : ''));
    setText(card.querySelector('.dl-eta'), running
      ? (d.eta_secs === null || d.eta_secs === undefined ? 'ETA –' : `ETA ${fmtDuration(d.eta_secs)}`)
      : (d.elapsed_secs ? `took ${fmtDuration(d.elapsed_secs)}` : ''));
    setText(card.querySelector('.dl-sources'), running ? fmtCount(d.sources || 0, 'source') : `${d.chunks_done}/${d.chunks_total} chunks`);
    const err = card.querySelector('.dl-error');
    showError(err, d.state === 'failed' ? (d.error || 'failed') : (d.error && d.state !== 'done' ? d.error : ''));
    const dest = card.querySelector('.dl-dest');
    setText(dest, d.dest || '');
    dest.title = d.dest || '';
    setHidden(card.querySelector('.cancel-btn'), !running);
    setHidden(card.querySelector('.resume-btn'), d.state !== 'cancelled' && d.state !== 'failed');
  }

  function renderHave(id, have, total) {
    const card = S.cards.get(id);
    if (!card) return;
    const map = card.querySelector('.dlmap');
    const n = have ? have.length : total;
    const bucket = renderCells(map, n, (i) => (have ? (have.charCodeAt(i) === 49 ? 1 : 0) : 1),
      () => {},
      (from, to, v) => `${chunkRange(from, to)}: ${v ? 'verified' : 'missing'}`);
    map.setAttribute('aria-label', `${n} chunks`);
    const note = card.querySelector('.dlmap-note');
    if (bucket > 1) { setText(note, `Each square = ${bucket} chunks; filled when all of them are verified.`); note.hidden = false; }
    else note.hidden = true;
  }

  function maybeLoadHave(id, d) {
    let st = S.have.get(id);
    if (!st) { st = { inflight: false, last: 0, final: false }; S.have.set(id, st); }
    if (d.state === 'done') {
      if (!st.final) { st.final = true; renderHave(id, null, d.chunks_total || 0); }
      return;
    }
    if (d.state !== 'running') {
      if (st.final || st.inflight) return;
      st.final = true;
      loadHave(id, st);
      return;
    }
    st.final = false;
    if (!st.inflight && Date.now() - st.last >= 1000) loadHave(id, st);
  }

  async function loadHave(id, st) {
    st.inflight = true;
    st.last = Date.now();
    try {
      const d = await api(`/api/downloads/${encodeURIComponent(id)}`);
      if (typeof d.have === 'string') renderHave(id, d.have, d.chunks_total);
    } catch (e) {
      if (e.code === 'no_such_download') st.final = true;
    } finally {
      st.inflight = false;
      st.last = Date.now();
    }
  }

  async function cancelDownload(id, card) {
    const btn = card.querySelector('.cancel-btn');
    btn.disabled = true;
    setText(btn, 'Cancelling…');
    try {
      const d = await api(`/api/downloads/${encodeURIComponent(id)}/cancel`, { method: 'POST', body: {} });
      upsertDownload(d);
    } catch (e) {
      toast(`Cannot cancel: ${errText(e)}`, 'error');
    } finally {
      btn.disabled = false;
      setText(btn, 'Cancel');
    }
  }

  async function resumeDownload(id, card) {
    const btn = card.querySelector('.resume-btn');
    btn.disabled = true;
    setText(btn, 'Resuming…');
    try {
      const d = await api(`/api/downloads/${encodeURIComponent(id)}/resume`, { method: 'POST', body: {} });
      upsertDownload(d);
    } catch (e) {
      toast(`Cannot resume: ${errText(e)}`, 'error');
    } finally {
      btn.disabled = false;
      setText(btn, 'Resume');
    }
  }

  async function loadDownloads() {
    try {
      const r = await api('/api/downloads');
      for (const d of r.downloads || []) upsertDownload(d);
    } catch (e) {
      console.warn(e);
    }
    renderDownloadsMeta();
  }

  function onEnded(d) {
    const st = S.have.get(String(d.id));
    if (st) st.final = false;
    upsertDownload(d);
    announceEnd(d);
  }

  function announceEnd(d) {
    const id = String(d.id);
    if (S.toasted.has(id)) return;
    S.toasted.add(id);
    if (d.state === 'done') toast(`${d.name} fetched`, 'ok');
    else if (d.state === 'failed') toast(`${d.name} failed: ${d.error || 'unknown error'}`, 'error');
    else if (d.state === 'cancelled') toast(`${d.name} cancelled`, 'info');
    loadRepo();
    refreshFiles();
    loadStatus().catch(() => {});
  }

  // ------------------------------------------------------------ repository

  function renderRepo() {
    const r = S.repo;
    if (!r) return;
    if (r.path) setText($('#repo-path'), r.path);
    const pub = $('#repo-published');
    const pubs = r.published || [];
    if (!pubs.length) {
      fill(pub, h('div', { class: 'empty small', text: 'Nothing published yet.' }));
    } else {
      fill(pub, h('ul', { class: 'file-list' }, ...pubs.map((p) => h('li', { dataset: { name: p.name } },
        h('div', { class: 'file-line' },
          h('span', { class: 'file-name', text: p.name, title: `content ${p.content_id}` }),
          h('span', { class: 'muted num', text: `${fmtBytes(p.size)} · ${fmtCount(p.chunks, 'chunk')}` })),
        h('div', { class: 'mono path', text: p.path, title: p.path })))));
    }
    const fet = $('#repo-fetched');
    const fs = r.fetched || [];
    if (!fs.length) {
      fill(fet, h('div', { class: 'empty small', text: 'Nothing fetched yet.' }));
    } else {
      fill(fet, h('ul', { class: 'file-list' }, ...fs.map((p) => h('li', { dataset: { name: p.name } },
        h('div', { class: 'file-line' },
          h('span', { class: 'file-name', text: p.name, title: `content ${p.content_id}` }),
          h('span', { class: 'muted num', text: fmtBytes(p.size) })),
        h('div', { class: 'mono path', text: p.path, title: p.path })))));
    }
  }

  async function loadRepo() {
    try {
      S.repo = await api('/api/repo');
      renderRepo();
      renderNetwork();
    } catch (e) {
      $('#repo-published').replaceChildren(h('p', { class: 'form-error', text: errText(e) }));
    }
  }

  // ------------------------------------------------------------ forms

  bindForm($('#connect-form'), $('#connect-error'), async () => {
    const addr = $('#connect-addr').value.trim();
    if (!addr) throw new Error('Enter the tracker\'s address, e.g. 127.0.0.1:7000.');
    const r = await api('/api/connect', { method: 'POST', body: { addr } });
    toast(`Connected to the tracker at ${r.tracker}`, 'ok');
    $('#connect-addr').value = '';
    await Promise.all([loadStatus().catch(() => {}), loadFiles()]);
  });

  bindForm($('#publish-form'), $('#publish-error'), async () => {
    const path = $('#publish-path').value.trim();
    if (!path) throw new Error('Enter the path of a file on this machine, e.g. /home/me/notes.txt.');
    const name = $('#publish-name').value.trim() || basename(path);
    const p = await api('/api/publish', { method: 'POST', body: { path, name }, timeout: 0 });
    $('#publish-path').value = '';
    $('#publish-name').value = '';
    toast(`Published ${p.name} (${fmtBytes(p.size)}, ${fmtCount(p.chunks, 'chunk')})`, 'ok');
    await Promise.all([loadRepo(), loadFiles(), loadStatus().catch(() => {})]);
  });
  // Show the default name as the placeholder while typing the path.
  $('#publish-path').addEventListener('input', () => {
    const b = basename($('#publish-path').value);
    $('#publish-name').placeholder = b ? `default: ${b}` : 'defaults to the file\'s name';
  });

  bindForm($('#discover-form'), null, async () => {
    await discover($('#discover-addr').value.trim(), $('#discover-result'), (f, r) => {
      if (r.peer_id === S.status.peer_id) return h('span', { class: 'tag own-tag', text: 'yours' });
      const b = h('button', { type: 'button', class: 'btn small discover-fetch-btn', text: 'Fetch' });
      b.addEventListener('click', async () => {
        b.disabled = true;
        const body = { name: f.name, from: r.addr };
        const dest = $('#fetch-dest').value.trim();
        if (dest) body.dest = dest;
        try {
          const d = await api('/api/fetch', { method: 'POST', body });
          $('#fetch-dest').value = '';
          upsertDownload(d, true);
          toast(`Fetching ${f.name} from ${r.addr}…`, 'info', 3000);
        } catch (e) {
          toast(`Cannot fetch ${f.name}: ${errText(e)}`, 'error');
        } finally {
          b.disabled = false;
        }
      });
      return b;
    });
  });

  bindForm($('#delay-form'), $('#delay-error'), async () => {
    const raw = $('#delay-seconds').value.trim();
    const seconds = Number(raw);
    if (raw === '' || !isFinite(seconds) || seconds < 0) throw new Error('Enter a number of seconds, 0 or more (e.g. 0.5).');
    const r = await api('/api/delay', { method: 'POST', body: { seconds } });
    S.status.delay_secs = r.delay_secs;
    $('#delay-seconds').dataset.dirty = '';
    setText($('#delay-current'), `${r.delay_secs} s`);
    toast(r.delay_secs ? `Each chunk is now answered after ${r.delay_secs} s` : 'Upload delay off', 'ok', 3000);
  });

  $('#network-refresh').addEventListener('click', () => loadFiles());
  $('#delay-seconds').addEventListener('input', (ev) => { ev.target.dataset.dirty = '1'; });

  // Remember whether the fetch options are open.
  const adv = $('#fetch-advanced');
  try { if (localStorage.getItem('p2pfs.fetchOptions') === 'closed') adv.open = false; } catch (_) { /* private mode */ }
  adv.addEventListener('toggle', () => {
    try { localStorage.setItem('p2pfs.fetchOptions', adv.open ? 'open' : 'closed'); } catch (_) { /* ignore */ }
  });

  bindExit('peer');

  // ------------------------------------------------------------ live

  const refreshFiles = coalesce(loadFiles, 800);

  renderStatus();
  renderDownloadsMeta();
  loadFiles();
  loadRepo();
  loadDownloads();

  openEvents({
    downloads: (data) => { for (const d of (data && data.downloads) || []) upsertDownload(d); },
    ended: (d) => { if (d) onEnded(d); },
    tracker: (t) => {
      if (t && t.state === 'lost') toast(`Lost the tracker at ${t.addr} — reconnecting…`, 'error');
      else if (t && t.state === 'reconnected') toast(`Reconnected to the tracker at ${t.addr}`, 'ok');
      loadStatus().catch(() => {});
      refreshFiles();
    },
  }, () => {
    loadStatus().catch(() => {});
    loadFiles();
    loadRepo();
    loadDownloads();
  });

  every(3000, () => {
    if (document.hidden) return;
    loadStatus().catch(() => {});
    refreshFiles();
  });
  every(15000, () => { if (!document.hidden) loadRepo(); });
}
