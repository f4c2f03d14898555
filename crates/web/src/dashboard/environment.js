// One environment's page: its status follows the reconciler (announced politely through its live
// region), the actions ask the API without leaving the page, and destroy asks to be confirmed first.
(() => {
  const status = document.getElementById('status');
  const result = document.getElementById('action-result');
  const problem = document.getElementById('problem');
  const id = status.dataset.env;
  const every = Number(status.dataset.refresh) || 1000;
  setInterval(async () => {
    let r;
    try {
      r = await fetch(`/environments/${id}?fragment=status`, { credentials: 'same-origin' });
    } catch (_) {
      return;
    }
    if (!r.ok) return;
    const now = await r.text();
    if (status.textContent !== now) {
      status.textContent = now;
      status.className = 'status ' + now;
      if (problem) problem.hidden = now !== 'failed';
    }
  }, every);
  for (const b of document.querySelectorAll('button[data-action]')) {
    b.addEventListener('click', async () => {
      b.disabled = true;
      const r = await fetch(`/api/environments/${id}/${b.dataset.action}${b.dataset.query || ''}`,
        { method: 'POST', credentials: 'same-origin' }).catch(() => null);
      b.disabled = false;
      const what = b.dataset.label || b.dataset.action;
      if (r && r.ok) {
        result.textContent = `${what}: recorded; the status follows.`;
        if (b.dataset.action === 'keep') {
          // Kept now, or no longer: the button offers the other.
          const kept = !b.dataset.query;
          b.dataset.query = kept ? '?value=false' : '';
          b.dataset.label = kept ? 'Stop keeping' : 'Keep';
          b.textContent = b.dataset.label;
        } else {
          b.textContent = b.dataset.label + ' ✓';
        }
      } else {
        const why = r ? `${r.status} ${(await r.text()).slice(0, 300)}` : 'previewd did not answer';
        result.textContent = `${what}: refused (${why})`;
      }
      const panel = b.closest('.confirm');
      if (panel) panel.hidden = true;
    });
  }
  const ask = document.querySelector('button[data-confirm]');
  if (ask) {
    const panel = document.getElementById(ask.getAttribute('aria-controls'));
    ask.addEventListener('click', () => {
      panel.hidden = false;
      ask.setAttribute('aria-expanded', 'true');
      panel.querySelector('button[data-action]').focus();
    });
    panel.querySelector('button[data-cancel]').addEventListener('click', () => {
      panel.hidden = true;
      ask.setAttribute('aria-expanded', 'false');
      ask.focus();
    });
  }
})();
