// The list's live refresh: fresh rows every few seconds, swapped in row by row, so a row that did not
// change keeps its elements (one whose relative times alone moved has them updated in place); the
// element a person had focused is focused again when its row was replaced; a change of status is
// announced politely (screen readers say it when the person pauses).
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
    if (counts !== null && summary.innerHTML !== counts) {
      const held = summary.contains(document.activeElement) ? document.activeElement.getAttribute('href') : null;
      summary.innerHTML = counts;
      if (held) summary.querySelector(`a[href="${CSS.escape(held)}"]`)?.focus();
    }
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
    // A row as it reads but for its relative times ("3 s ago"), which change at every refresh.
    const timeless = (tr) => {
      const copy = tr.cloneNode(true);
      copy.querySelectorAll('time').forEach((t) => { t.textContent = ''; });
      return copy.outerHTML;
    };
    const sameRows = olds.length === news.length && olds.every((o, i) => o.dataset.env === news[i].dataset.env);
    if (sameRows) {
      olds.forEach((o, i) => {
        if (o.outerHTML === news[i].outerHTML) return;
        if (timeless(o) === timeless(news[i])) {
          const times = news[i].querySelectorAll('time');
          o.querySelectorAll('time').forEach((t, n) => { t.textContent = times[n].textContent; });
        } else {
          o.replaceWith(news[i]);
        }
      });
    } else {
      rows.replaceChildren(...news);
    }
    if (held && !rows.contains(document.activeElement)) {
      const row = [...rows.children].find((tr) => tr.dataset.env === held.env);
      const again = row && [...row.querySelectorAll('a[href]')].find((a) => a.getAttribute('href') === held.href);
      if (again) again.focus();
    }
    if (said.length) {
      // Emptied first: the same words set again would not be announced again.
      announce.textContent = '';
      setTimeout(() => { announce.textContent = said.join('; '); }, 100);
    }
  }, every);
})();
