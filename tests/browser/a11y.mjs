// Accessibility checks for the dashboard tests: axe-core (through @axe-core/playwright) run on the
// page as it is now, and a helper to look at the same page at several widths.
//
//   import { accessible, atWidths } from './a11y.mjs';
//   await atWidths(page, [1280, 390], async (width) => {
//     const problems = await accessible(page, `list at ${width}px`);
//     if (problems.length) fail(problems.join('\n'));
//   });
import { AxeBuilder } from '@axe-core/playwright';

// WCAG 2.0 and 2.1, levels A and AA, and axe's best practices.
export const TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'];
// Only these are reported; 'moderate' and 'minor' (e.g. best-practice 'region', 'landmark-one-main')
// are left out.
const IMPACTS = new Set(['critical', 'serious']);
const NODES_SHOWN = 3;
const HTML_SHOWN = 120;

const short = (html) => {
  const one = String(html ?? '').replace(/\s+/g, ' ').trim();
  return one.length > HTML_SHOWN ? `${one.slice(0, HTML_SHOWN - 1)}…` : one;
};

// The target of a node: a CSS selector, or a list of them when it is inside frames or shadow roots.
const target = (node) => (Array.isArray(node.target) ? node.target.flat(Infinity).join(' >>> ') : String(node.target));

/**
 * Runs axe on the page as it is now and returns one human-readable line per critical or serious
 * violation: `label: id [impact] help (helpUrl)` followed by up to 3 affected nodes, each as its
 * selector and a short snippet of its HTML. An empty list means none was found.
 * @param {import('playwright-core').Page} page
 * @param {string} label what the page is, put at the start of every line (e.g. 'list at 390px')
 * @returns {Promise<string[]>}
 */
export async function accessible(page, label) {
  let results;
  try {
    results = await new AxeBuilder({ page }).withTags(TAGS).analyze();
  } catch (e) {
    // axe finishes its run in a second page of the same context, which a page made by
    // browser.newPage() may not open ("Please use browser.newContext()"). Then run it all inside
    // the page itself (axe's legacy mode: the same rules; only cross-origin frames go unchecked).
    if (!/browser\.newContext\(\)/.test(e.message)) throw e;
    results = await new AxeBuilder({ page }).withTags(TAGS).setLegacyMode(true).analyze();
  }
  return results.violations
    .filter((v) => IMPACTS.has(v.impact))
    .map((v) => {
      const nodes = v.nodes.slice(0, NODES_SHOWN).map((n) => `\n    ${target(n)}: ${short(n.html)}`).join('');
      const more = v.nodes.length > NODES_SHOWN ? `\n    … and ${v.nodes.length - NODES_SHOWN} more` : '';
      return `${label}: ${v.id} [${v.impact}] ${v.help} (${v.helpUrl})${nodes}${more}`;
    });
}

/**
 * For each width, sets the viewport to width × 900 and awaits fn(width), one after another.
 * The viewport is left at the last width.
 * @param {import('playwright-core').Page} page
 * @param {number[]} widths e.g. [1280, 390]
 * @param {(width: number) => Promise<void> | void} fn
 */
export async function atWidths(page, widths, fn) {
  for (const width of widths) {
    await page.setViewportSize({ width, height: 900 });
    await fn(width);
  }
}
