// The merge view: every annotator's spans of one response; the reviewer accepts, edits or rejects
// each, may add spans, keeps the missing-information notes that hold, picks or writes the
// correction, and saves an adjudicated version (the server applies the shared rules again).
import { pageData, h, fillHeader, postJSON, setStatus, showSubmitError } from './common.js';
import { normalise } from './text.js';
import { renderPassages } from './passages.js';
import { annotationProblems } from './rules.js';

const task = pageData();
fillHeader(task);
const $ = (id) => document.getElementById(id);
const text = normalise(task.response?.text ?? '');
const cps = Array.from(text);
const quote = (s, e) => cps.slice(s, e).join('');
const categories = (task.categories ?? []).map((c) => c.name);
const colour = new Map((task.categories ?? []).map((c) => [c.name, c.color]));
let version = task.version ?? 0;

// decisions["annotator#index"] = {decision: accept|edit|reject, span}
const decisions = new Map();
const added = [];
const keptNotes = new Set(); // "annotator#index"
const annotations = task.annotations ?? [];

$('prompt').textContent = task.prompt ?? '';
renderPassages($('passages'), task.passages ?? [], () => {});
$('response-info').textContent = `${task.example_id}, response ${(task.response?.index ?? 0) + 1}; ${annotations.length} annotator(s)`;
$('version-info').textContent = version ? `(version ${version} saved by ${task.adjudication?.reviewer ?? '?'}; saving makes version ${version + 1})` : '';
for (const name of categories) $('add-category').append(h('option', { attrs: { value: name }, text: name }));

// a previous adjudication's decisions come back as they were
for (const d of task.adjudication?.decisions ?? []) {
  const a = annotations.find((x) => x.annotator === d.annotator);
  const original = a?.spans?.[d.index];
  if (original) decisions.set(`${d.annotator}#${d.index}`, { decision: d.decision, span: { ...(d.span ?? original) } });
}
for (const s of task.adjudication?.spans ?? []) if (s.decision === 'add') added.push({ ...s });

function swatch(category) {
  const node = h('span', { cls: 'swatch', text: category });
  if (colour.get(category)) node.style.setProperty('--cat', colour.get(category));
  return node;
}

function spanRow(who, i, span) {
  const key = `${who}#${i}`;
  const row = h('li', { attrs: { 'data-key': key } });
  const draw = () => {
    const d = decisions.get(key);
    const buttons = ['accept', 'edit', 'reject'].map((choice) => {
      const b = h('button', { cls: `choice choice-${choice}`, text: choice[0].toUpperCase() + choice.slice(1), attrs: { type: 'button', 'data-decision': choice, 'aria-pressed': String(d?.decision === choice) } });
      if (d?.decision === choice) b.classList.add('chosen');
      b.addEventListener('click', () => {
        decisions.set(key, { decision: choice, span: { ...(choice === 'edit' && d?.span ? d.span : span) } });
        draw();
        update();
      });
      return b;
    });
    const parts = [swatch(span.category), ' ', h('q', {}, h('bdi', { text: span.text })), h('span', { cls: 'muted small', text: ` [${span.start}, ${span.end})` })];
    if (span.explanation) parts.push(h('span', { cls: 'muted small' }, ' — ', h('bdi', { text: span.explanation })));
    parts.push(h('span', { cls: 'choices' }, ...buttons));
    if (d?.decision === 'edit') {
      const e = d.span;
      const start = h('input', { cls: 'num edit-start', attrs: { type: 'number', min: '0', value: String(e.start), 'aria-label': 'Start' } });
      const end = h('input', { cls: 'num edit-end', attrs: { type: 'number', min: '1', value: String(e.end), 'aria-label': 'End' } });
      const cat = h('select', { cls: 'edit-category', attrs: { 'aria-label': 'Category' } }, ...categories.map((c) => h('option', { attrs: { value: c }, text: c })));
      cat.value = e.category;
      const expl = h('input', { cls: 'edit-explanation', attrs: { type: 'text', value: e.explanation ?? '', 'aria-label': 'Explanation', dir: 'auto' } });
      const preview = h('q', {}, h('bdi', { text: e.text }));
      const sync = () => {
        e.start = Number(start.value); e.end = Number(end.value); e.category = cat.value; e.explanation = expl.value;
        e.text = quote(e.start, e.end);
        preview.replaceChildren(h('bdi', { text: e.text }));
        update();
      };
      for (const x of [start, end, cat, expl]) x.addEventListener('input', sync);
      parts.push(h('div', { cls: 'edit-box' }, start, end, cat, expl, ' ', preview));
    }
    row.replaceChildren(...parts);
  };
  draw();
  return row;
}

for (const a of annotations) {
  const list = h('ol', { cls: 'span-list' }, ...(a.spans ?? []).map((s, i) => spanRow(a.annotator, i, s)));
  const all = h('button', { cls: 'link', text: 'accept all', attrs: { type: 'button' } });
  all.addEventListener('click', () => {
    (a.spans ?? []).forEach((s, i) => decisions.set(`${a.annotator}#${i}`, { decision: 'accept', span: { ...s } }));
    list.replaceChildren(...(a.spans ?? []).map((s, i) => spanRow(a.annotator, i, s)));
    update();
  });
  const head = h('h4', {}, h('bdi', { text: a.annotator }), h('span', { cls: 'muted small', text: ` version ${a.version}${a.no_error ? ' · marked "no error"' : ''} ` }), (a.spans ?? []).length ? all : null);
  $('annotators').append(h('div', { cls: 'annotator-card', attrs: { 'data-annotator': a.annotator } }, head,
    (a.spans ?? []).length ? list : h('p', { cls: 'muted', text: 'No spans.' })));
  (a.missing ?? []).forEach((m, i) => {
    const key = `${a.annotator}#${i}`;
    const box = h('input', { attrs: { type: 'checkbox', 'aria-label': `Keep ${a.annotator}'s note ${i + 1}` } });
    box.checked = (task.adjudication?.missing ?? []).some((x) => x.type === m.type && x.passage === m.passage && JSON.stringify(x.sentences) === JSON.stringify(m.sentences));
    if (box.checked) keptNotes.add(key);
    box.addEventListener('change', () => { if (box.checked) keptNotes.add(key); else keptNotes.delete(key); update(); });
    $('missing').append(h('li', {}, h('label', {}, box, ` ${a.annotator}: ${m.type}, passage ${m.passage}, sentence(s) ${m.sentences.join(', ')}`,
      m.note ? h('span', { cls: 'muted' }, ' — ', h('bdi', { text: m.note })) : null)));
  });
  if (typeof a.corrected === 'string' && a.corrected !== text) {
    const b = h('button', { text: `Use ${a.annotator}'s correction`, attrs: { type: 'button' } });
    b.addEventListener('click', () => { $('corrected').value = a.corrected; update(); });
    $('corrections').append(b);
  }
}
$('corrected').value = task.adjudication?.corrected ?? text;
$('no-error').checked = Boolean(task.adjudication?.no_error);

function renderAdded() {
  $('added').replaceChildren(...added.map((s, i) => {
    const remove = h('button', { cls: 'link remove', text: 'Remove', attrs: { type: 'button' } });
    remove.addEventListener('click', () => { added.splice(i, 1); renderAdded(); update(); });
    return h('div', {}, swatch(s.category), ' ', h('q', {}, h('bdi', { text: s.text })), h('span', { cls: 'muted small', text: ` [${s.start}, ${s.end})` }), ' ', remove);
  }));
}
$('add-span').addEventListener('click', () => {
  const start = Number($('add-start').value);
  const end = Number($('add-end').value);
  if (!(Number.isInteger(start) && Number.isInteger(end) && start >= 0 && end > start && end <= cps.length)) {
    setStatus($('submit-status'), 'error', `Start and end must satisfy 0 <= start < end <= ${cps.length}.`);
    return;
  }
  added.push({ start, end, category: $('add-category').value, text: quote(start, end), explanation: '' });
  renderAdded();
  update();
});
renderAdded();

/** The adjudicated spans the decisions make: accepted and edited spans, identical ones once. */
function resultSpans() {
  const out = new Map();
  for (const [, d] of decisions) {
    if (d.decision === 'reject') continue;
    const k = `${d.span.start}:${d.span.end}:${d.span.category}`;
    if (!out.has(k)) out.set(k, d.span);
  }
  for (const s of added) { const k = `${s.start}:${s.end}:${s.category}`; if (!out.has(k)) out.set(k, s); }
  return [...out.values()].sort((a, b) => a.start - b.start || a.end - b.end);
}

function keptMissing() {
  const seen = new Set();
  const out = [];
  for (const a of annotations) {
    (a.missing ?? []).forEach((m, i) => {
      if (!keptNotes.has(`${a.annotator}#${i}`)) return;
      const k = JSON.stringify([m.type, m.passage, m.sentences]);
      if (seen.has(k)) return;
      seen.add(k);
      out.push({ type: m.type, passage: m.passage, sentences: m.sentences, note: m.note ?? '' });
    });
  }
  return out;
}

function body() {
  const corrected = normalise($('corrected').value);
  return {
    decisions: [...decisions].map(([key, d]) => {
      const cut = key.lastIndexOf('#');
      const out = { annotator: key.slice(0, cut), index: Number(key.slice(cut + 1)), decision: d.decision };
      if (d.decision === 'edit') out.span = { start: d.span.start, end: d.span.end, category: d.span.category, text: d.span.text, explanation: d.span.explanation ?? '' };
      return out;
    }),
    added: added.map(({ start, end, category, text: t, explanation }) => ({ start, end, category, text: t, explanation: explanation ?? '' })),
    missing: keptMissing(),
    corrected: corrected === text ? null : corrected,
    no_error: $('no-error').checked,
    base_version: version,
  };
}

function problems() {
  const out = [];
  const open = annotations.flatMap((a) => (a.spans ?? []).map((_, i) => `${a.annotator}#${i}`)).filter((k) => !decisions.has(k));
  if (open.length) out.push(`Decide every span (${open.length} open: ${open.slice(0, 5).join(', ')}).`);
  const b = body();
  const found = annotationProblems({ spans: resultSpans(), missing: b.missing, no_error: b.no_error }, {
    text, passages: task.passages ?? [], categories, missingKinds: task.missing_kinds ?? [],
  });
  for (const p of found) out.push(`${p.field}: ${p.message}.`);
  return out;
}

function update() {
  const spans = resultSpans();
  $('result').replaceChildren(...spans.map((s) => h('li', {}, swatch(s.category), ' ', h('q', {}, h('bdi', { text: s.text })), h('span', { cls: 'muted small', text: ` [${s.start}, ${s.end})` }))));
  if (!spans.length) $('result').append(h('li', { cls: 'muted', text: 'No spans.' }));
  // the response with the adjudicated spans marked (text nodes only)
  const cuts = [...new Set([0, cps.length, ...spans.flatMap((s) => [s.start, s.end])])].filter((x) => x >= 0 && x <= cps.length).sort((a, b) => a - b);
  const parts = [];
  for (let k = 0; k + 1 < cuts.length; k += 1) {
    const piece = quote(cuts[k], cuts[k + 1]);
    const cover = spans.find((s) => s.start <= cuts[k] && s.end >= cuts[k + 1]);
    if (!cover) { parts.push(document.createTextNode(piece)); continue; }
    const mark = h('mark', { cls: 'span', text: piece, attrs: { title: cover.category } });
    if (colour.get(cover.category)) mark.style.setProperty('--cat', colour.get(cover.category));
    parts.push(mark);
  }
  $('response').replaceChildren(...parts);
  const found = problems();
  $('problems').hidden = !found.length;
  $('problems').textContent = found.join(' ');
}

async function save() {
  const found = problems();
  const status = $('submit-status');
  if (found.length) { setStatus(status, 'error', found.join(' ')); return; }
  $('submit').disabled = true;
  setStatus(status, 'busy', 'Saving…');
  try {
    const answer = await postJSON(`/api/review/${task.id}/adjudicate`, body(), task.csrf_token, { retries: 2 });
    version = answer.version;
    setStatus(status, 'ok', `Adjudicated version ${answer.version} saved.`);
    $('version-info').textContent = `(version ${version} saved)`;
  } catch (err) {
    showSubmitError(status, err);
  } finally {
    $('submit').disabled = false;
  }
}

$('submit').addEventListener('click', save);
$('corrected').addEventListener('input', update);
$('no-error').addEventListener('change', update);
document.addEventListener('keydown', (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key === 'Enter') { event.preventDefault(); save(); }
});
update();
