// The comparison page: every pair of the K responses side by side with a word diff, a judgement
// per pair (left better / equal / right better), the transitivity check, drafts and submission.
import {
  pageData, h, newKey, postJSON, setStatus, debounce, typingIn, explainError, showSubmitError, fillHeader, ApiError,
} from './common.js';
import { normalise, wordDiff } from './text.js';
import { renderPassages } from './passages.js';
import { intransitiveTriples, derivedRanking, outcomeFor, choiceFor } from './rank.js';

const task = pageData();
fillHeader(task);
const $ = (id) => document.getElementById(id);

const texts = new Map((task.responses ?? []).map((r) => [r.index, normalise(r.text ?? '')]));
const items = [...texts.keys()];
const label = (index) => `Response ${items.indexOf(index) + 1}`;
const pairs = task.pairs ?? [];
const choices = pairs.map(() => null); // "left" | "equal" | "right" per pair, as shown
let current = 0;
let version = task.version ?? 0;
let lastSubmit = null;

const CHOICES = [
  { choice: 'left', key: '1', alt: 'a', text: 'Left better' },
  { choice: 'equal', key: '2', alt: 's', text: 'Equal' },
  { choice: 'right', key: '3', alt: 'd', text: 'Right better' },
];

if (task.latest?.judgements) {
  for (const j of task.latest.judgements) {
    const i = pairs.findIndex((p) => p.a === j.a && p.b === j.b);
    if (i >= 0 && [0, 1, 2].includes(j.outcome)) choices[i] = choiceFor(pairs[i], j.outcome);
  }
  current = Math.max(0, choices.findIndex((c) => c === null));
}

// ---- static parts ---------------------------------------------------------------------------
$('prompt').textContent = task.prompt ?? '';
renderPassages($('passages'), task.passages ?? [], () => {});
$('passages-box').hidden = !(task.passages ?? []).length;
$('responses').append(...items.map((i) => h('article', { cls: 'response-card' },
  h('h3', { text: label(i) }), h('p', { cls: 'response-text', text: texts.get(i), attrs: { dir: 'auto' } }))));
$('response-count').textContent = `(${items.length}; each pair below shows its two side by side)`;

const cards = pairs.map((pair, i) => {
  const diff = wordDiff(texts.get(pair.left) ?? '', texts.get(pair.right) ?? '');
  const side = (parts) => h('p', { cls: 'response-text', attrs: { dir: 'auto' } },
    ...parts.flatMap((part) => {
      if (part.kind === 'same') return [part.text];
      const word = part.text.trimEnd(); // the space after a changed word is not itself a change
      return [h('span', { cls: `diff-${part.kind}`, text: word }), part.text.slice(word.length)];
    }));
  const buttons = CHOICES.map((c) => h('button', {
    cls: `choice choice-${c.choice}`,
    attrs: { type: 'button', 'data-choice': c.choice },
    on: { click: () => choose(i, c.choice) },
  }, h('kbd', { text: c.key }), ` ${c.text}`));
  const card = h('section', { cls: 'pair', attrs: { 'data-pair': i } },
    h('div', { cls: 'pair-head' },
      h('strong', { text: `Pair ${i + 1} of ${pairs.length}` }),
      h('span', { cls: 'muted', text: ` ${label(pair.left)} (left) vs ${label(pair.right)} (right)` })),
    h('div', { cls: 'pair-sides' },
      h('div', { cls: 'side side-left' }, h('h4', { text: `Left: ${label(pair.left)}` }), side(diff.left)),
      h('div', { cls: 'side side-right' }, h('h4', { text: `Right: ${label(pair.right)}` }), side(diff.right))),
    h('div', { cls: 'choices', attrs: { role: 'group', 'aria-label': `Judgement for pair ${i + 1}` } }, ...buttons));
  card.addEventListener('click', () => { if (current !== i) { current = i; render(); } });
  return card;
});
$('pairs').append(...cards);

// ---- behaviour ----------------------------------------------------------------------------------
function judgements() {
  return pairs.flatMap((pair, i) => (choices[i] === null ? [] : [{
    a: pair.a, b: pair.b, outcome: outcomeFor(pair, choices[i]), shown_left: pair.left,
  }]));
}

function choose(i, choice) {
  choices[i] = choice;
  const next = choices.findIndex((c, k) => c === null && k > i);
  const anyOpen = choices.findIndex((c) => c === null);
  current = next >= 0 ? next : anyOpen >= 0 ? anyOpen : i;
  render(true);
  saveDraft();
}

function render(scroll = false) {
  cards.forEach((card, i) => {
    card.classList.toggle('current', i === current);
    card.classList.toggle('judged', choices[i] !== null);
    for (const b of card.querySelectorAll('button.choice')) {
      const on = b.dataset.choice === choices[i];
      b.classList.toggle('chosen', on);
      b.setAttribute('aria-pressed', String(on));
    }
  });
  if (scroll) cards[current]?.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  const done = choices.filter((c) => c !== null).length;
  $('pair-progress').textContent = `${done} of ${pairs.length} judged`;
  const js = judgements();
  const bad = intransitiveTriples(js, items);
  const warning = $('transitivity');
  warning.hidden = !bad.length;
  const relation = (x, y) => {
    const j = js.find((k) => (k.a === x && k.b === y) || (k.a === y && k.b === x));
    const xWins = j.outcome === (j.a === x ? 1 : 2);
    return `${label(x)} ${j.outcome === 0 ? '=' : xWins ? '>' : '<'} ${label(y)}`;
  };
  warning.textContent = bad.length
    ? `These judgements cannot all hold in one ranking: ${bad.map(([x, y, z]) => `${relation(x, y)}, ${relation(y, z)} but ${relation(x, z)}`).join('; ')}. `
      + 'Please check them (you may still submit).'
    : '';
  $('ranking').textContent = done
    ? `Ranking so far: ${derivedRanking(js, items).map((g) => g.map(label).join(' = ')).join('  >  ')}`
    : '';
}

const draftStatus = $('draft-status');
if (task.latest) {
  setStatus(draftStatus, 'ok', task.latest_is_draft ? 'Draft restored' : `Your submitted version ${version} is loaded`);
}
let draftInFlight = Promise.resolve();
const saveDraft = debounce(() => { draftInFlight = writeDraft(); }, 700);
async function writeDraft() {
  setStatus(draftStatus, 'busy', 'Saving draft…');
  try {
    await postJSON(`/api/tasks/${task.id}/draft`, { judgements: judgements(), idempotency_key: newKey(), base_version: version },
      task.csrf_token, { retries: 3, onRetry: () => setStatus(draftStatus, 'warn', 'Draft not saved yet: retrying…') });
    setStatus(draftStatus, 'ok', `Draft saved ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    setStatus(draftStatus, 'error', `Draft not saved: ${explainError(err)}`);
  }
}

let submitting = false;
async function submit() {
  if (submitting) return;
  const status = $('submit-status');
  const open = choices.map((c, i) => (c === null ? i + 1 : null)).filter((x) => x !== null);
  if (open.length) {
    setStatus(status, 'error', `Judge every pair first (open: pair ${open.join(', ')}).`);
    current = open[0] - 1;
    render(true);
    return;
  }
  const content = JSON.stringify(judgements());
  if (!lastSubmit || lastSubmit.content !== content) lastSubmit = { content, key: newKey() };
  submitting = true;
  $('submit').disabled = true;
  // The submission supersedes any draft: drop a pending one, let one in flight finish first.
  saveDraft.cancel();
  await draftInFlight;
  setStatus(status, 'busy', 'Submitting…');
  try {
    const answer = await postJSON(`/api/tasks/${task.id}/submit`,
      { judgements: JSON.parse(content), idempotency_key: lastSubmit.key, base_version: version }, task.csrf_token, {
        onRetry: (n, ms) => setStatus(status, 'warn', `No answer from the server; retrying in ${Math.round(ms / 1000)} s (attempt ${n})…`),
      });
    version = answer.version ?? version;
    lastSubmit = null;
    setStatus(status, 'ok', `Submitted (version ${answer.version}). Back to your queue…`);
    setTimeout(() => window.location.assign('/'), 1200);
  } catch (err) {
    if (err instanceof ApiError && err.status >= 400) lastSubmit = null;
    showSubmitError(status, err);
  } finally {
    submitting = false;
    $('submit').disabled = false;
  }
}

$('submit').addEventListener('click', submit);
document.addEventListener('keydown', (event) => {
  const ctrl = event.ctrlKey || event.metaKey;
  if (ctrl && event.key === 'Enter') { event.preventDefault(); submit(); return; }
  if (typingIn(event) || ctrl || event.altKey || !pairs.length) return;
  const key = event.key.toLowerCase();
  const c = CHOICES.find((x) => x.key === key || x.alt === key);
  if (c) { event.preventDefault(); choose(current, c.choice); return; }
  if (event.key === 'ArrowDown' || key === 'j') { event.preventDefault(); current = Math.min(pairs.length - 1, current + 1); render(true); }
  if (event.key === 'ArrowUp' || key === 'k') { event.preventDefault(); current = Math.max(0, current - 1); render(true); }
});

render();
