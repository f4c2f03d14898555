// The list's live refresh: fresh rows every few seconds, swapped in row by row, so a row that did not
// change keeps its elements; the element a person had focused is focused again when its row was
// replaced; a change of status is announced politely (screen readers say it when the person pauses).
(() => {
  const rows = document.getElementById('rows');
  const summary = document.getElementById('summary');
  const announce = document.getElementById('announce');
  const every = Number(rows.dataset.refresh) || 3000;
  const get = async (fragment) => {
    try {
      const r = await fetch('/?' + rows.dataset.query + '&fragment=' + fragment, { credentials: 'same-origin' });
      return r.ok ? await r.text() : null;
    } catch (_) {
      return null;
    }
  };
  setInterval(async () => {
    const [html, counts] = await Promise.all([get('rows'), get('summary')]);
    if (counts !== null && summary.innerHTML !== counts) summary.innerHTML = counts;
    if (html === null) return;
    const next = document.createElement('tbody');
    next.innerHTML = html;
    const focused = document.activeElement;
    const held = focused && rows.contains(focused) && focused.closest('tr')
      ? { env: focused.closest('tr').dataset.env, href: focused.getAttribute('href') }
      : null;
    const olds = [...rows.children];
    const news = [...next.children];
    const said = [];
    const before = new Map(olds.map((tr) => [tr.dataset.env, tr]));
    for (const tr of news) {
      const old = before.get(tr.dataset.env);
      if (old && old.dataset.status !== tr.dataset.status) said.push(`${tr.dataset.branch}: ${tr.dataset.status}`);
    }
    const sameRows = olds.length === news.length && olds.every((o, i) => o.dataset.env === news[i].dataset.env);
    if (sameRows) {
      olds.forEach((o, i) => { if (o.outerHTML !== news[i].outerHTML) o.replaceWith(news[i]); });
    } else {
      rows.replaceChildren(...news);
    }
    if (held && !rows.contains(document.activeElement)) {
      const row = [...rows.children].find((tr) => tr.dataset.env === held.env);
      const again = row && [...row.querySelectorAll('a[href]')].find((a) => a.getAttribute('href') === held.href);
      if (again) again.focus();
    }
    if (said.length) announce.textContent = said.join('; ');
  }, every);
})();
