// The span-annotation page: mark error spans in a response, note missing information with
// one-click evidence from the passages, correct the response, save drafts, submit.
import {
  pageData, h, newKey, postJSON, setStatus, debounce, typingIn, explainError, showSubmitError, fillHeader, ApiError,
} from './common.js';
import { normalise, codePoints, toCodePointOffset, snapToWords } from './text.js';
import { renderPassages } from './passages.js';
import { annotationProblems, graphemeBounds } from './rules.js';

const task = pageData();
fillHeader(task);
const $ = (id) => document.getElementById(id);

// ---- state --------------------------------------------------------------------------------
const responses = (task.responses ?? []).map((r) => {
  const text = normalise(r.text ?? '');
  return { index: r.index, text, cps: codePoints(text), bounds: graphemeBounds(text) };
});
const categories = (task.categories ?? []).map((c, i) => ({ ...c, key: String(c.key ?? i + 1), slot: i % 8 }));
const byName = new Map(categories.map((c) => [c.name, c]));
const missingKinds = task.missing_kinds?.length ? task.missing_kinds : ['Missing-Answer'];
const states = responses.map((r) => ({
  spans: [], missing: [], corrected: r.text, noError: false, submitted: false,
}));
const histories = responses.map(() => ({ undo: [], redo: [] }));
let cur = 0;
let pending = null; // {start, end, text}: a selection waiting for its category
let selectedSpan = -1; // index into the current spans, chosen by clicking a mark
let activeNote = -1; // the missing-information note that passage clicks attach to
let version = task.version ?? 0;
let lastSubmit = null; // {content, key}: the key is reused while the content stays the same

const st = () => states[cur];
const resp = () => responses[cur];

restoreLatest(task.latest);

// ---- undo / redo (spans, missing notes and "no error"; the textarea has its own undo) -------
const snapshot = () => JSON.stringify({ spans: st().spans, missing: st().missing, noError: st().noError });
function restore(snap) {
  const s = JSON.parse(snap);
  Object.assign(st(), s);
  selectedSpan = -1;
  activeNote = Math.min(activeNote, st().missing.length - 1);
}
/** Apply `mutate` to the current response's annotation as one undoable step. */
function change(mutate) {
  const before = snapshot();
  mutate(st());
  if (snapshot() === before) return;
  histories[cur].undo.push(before);
  histories[cur].redo.length = 0;
  afterChange();
}
function undo() {
  const hist = histories[cur];
  if (!hist.undo.length) return;
  hist.redo.push(snapshot());
  restore(hist.undo.pop());
  afterChange();
}
function redo() {
  const hist = histories[cur];
  if (!hist.redo.length) return;
  hist.undo.push(snapshot());
  restore(hist.redo.pop());
  afterChange();
}
function afterChange() {
  render();
  saveDraft();
}

// ---- spans ----------------------------------------------------------------------------------
function addSpan(category) {
  if (!pending) {
    if (selectedSpan >= 0) { // re-label the clicked span
      const i = selectedSpan;
      change((s) => { s.spans[i] = { ...s.spans[i], category: category.name }; });
      return;
    }
    warn('Select some words in the response first, then choose the category.');
    return;
  }
  const span = { ...pending, category: category.name, explanation: '' };
  const overlapping = st().spans.filter((s) => s.start < span.end && span.start < s.end);
  if (overlapping.length) {
    // the server refuses overlapping spans (one category per stretch of text): say so now
    warn(`This selection overlaps ${overlapping.map((o) => `the ${o.category} span "${o.text}"`).join(' and ')}; `
      + 'one category per stretch of text (the more severe one): remove or re-label that span instead.');
    return;
  }
  pending = null;
  change((s) => {
    s.spans.push(span);
    s.spans.sort((a, b) => a.start - b.start || a.end - b.end);
    s.noError = false;
  });
  selectedSpan = st().spans.indexOf(st().spans.find((x) => x.start === span.start && x.end === span.end));
  warn('');
  render();
}

function removeSpan(i) {
  change((s) => { s.spans.splice(i, 1); });
  selectedSpan = -1;
  render();
}

function warn(text) {
  const node = $('span-warning');
  node.textContent = text;
  node.hidden = !text;
}

/** The current mouse selection inside the response, as a snapped code-point span, or null. */
function selectionInResponse(precise) {
  const sel = window.getSelection();
  if (!sel || sel.rangeCount === 0 || sel.isCollapsed) return null;
  const range = sel.getRangeAt(0);
  const box = $('response');
  const whole = document.createRange();
  whole.selectNodeContents(box);
  // Clip the selection to the response box (it may start or end outside of it).
  if (range.compareBoundaryPoints(Range.START_TO_END, whole) <= 0
      || range.compareBoundaryPoints(Range.END_TO_START, whole) >= 0) return null;
  const startsInside = range.compareBoundaryPoints(Range.START_TO_START, whole) > 0;
  const endsInside = range.compareBoundaryPoints(Range.END_TO_END, whole) < 0;
  const text = box.textContent; // == the response: only text nodes, labels are CSS ::after
  const u16 = (node, offset) => {
    const r = document.createRange();
    r.setStart(box, 0);
    r.setEnd(node, offset);
    return r.toString().length;
  };
  const start16 = startsInside ? u16(range.startContainer, range.startOffset) : 0;
  const end16 = endsInside ? u16(range.endContainer, range.endOffset) : text.length;
  const cps = resp().cps;
  const snapped = snapToWords(cps, toCodePointOffset(text, start16), toCodePointOffset(text, end16), precise);
  if (!snapped) return null;
  // never split a grapheme cluster (ZWJ emoji, flag, letter + combining marks): widen to its edges
  const { bounds } = resp();
  while (snapped.start > 0 && !bounds.has(snapped.start)) snapped.start -= 1;
  while (snapped.end < cps.length && !bounds.has(snapped.end)) snapped.end += 1;
  return { ...snapped, text: cps.slice(snapped.start, snapped.end).join('') };
}

// ---- missing information ----------------------------------------------------------------------
function addNote(passage = null, sentences = []) {
  const type = activeNote >= 0 ? st().missing[activeNote].type : missingKinds[0];
  change((s) => { s.missing.push({ type, passage, sentences, note: '' }); s.noError = false; });
  activeNote = st().missing.length - 1;
  render();
}

/** One click on a passage sentence attaches it to the active note (or starts a note). */
function attachSentence(passage, sentence) {
  const note = st().missing[activeNote];
  if (!note || (note.passage !== null && note.passage !== passage && note.sentences.length)) {
    addNote(passage, [sentence]);
    return;
  }
  const i = activeNote;
  change((s) => {
    const n = s.missing[i];
    n.passage = passage;
    n.sentences = n.sentences.includes(sentence)
      ? n.sentences.filter((x) => x !== sentence)
      : [...n.sentences, sentence].sort((a, b) => a - b);
    if (!n.sentences.length) n.passage = null;
  });
}

// ---- rendering ----------------------------------------------------------------------------------
function render() {
  renderResponse();
  renderSpanList();
  renderMissing();
  passages.mark(st().missing, activeNote);
  $('no-error').checked = st().noError;
  if ($('corrected').value !== st().corrected) $('corrected').value = st().corrected;
  $('undo').disabled = !histories[cur].undo.length;
  $('redo').disabled = !histories[cur].redo.length;
  $('response-pos').textContent = responses.length > 1
    ? `${cur + 1} of ${responses.length}${st().submitted ? ' · submitted' : ''}` : '';
  $('prev-response').disabled = cur === 0;
  $('next-response').disabled = cur >= responses.length - 1;
}

function paint(mark, category) {
  mark.classList.add(`cat-slot-${category.slot}`);
  if (category.color) mark.style.setProperty('--cat', category.color); // CSSOM: allowed by the CSP
}

/** The response as text nodes, with <mark>s where spans (or the pending selection) cover it. */
function renderResponse() {
  const box = $('response');
  const { cps } = resp();
  const spans = st().spans;
  const cuts = new Set([0, cps.length]);
  for (const s of pending ? [...spans, pending] : spans) { cuts.add(s.start); cuts.add(s.end); }
  const bounds = [...cuts].sort((a, b) => a - b);
  const parts = [];
  for (let k = 0; k + 1 < bounds.length; k += 1) {
    const [a, b] = [bounds[k], bounds[k + 1]];
    const text = cps.slice(a, b).join('');
    const covering = spans.map((s, i) => [s, i]).filter(([s]) => s.start <= a && s.end >= b);
    const inPending = pending && pending.start <= a && pending.end >= b;
    if (!covering.length && !inPending) { parts.push(document.createTextNode(text)); continue; }
    const mark = h('mark', { cls: 'span' }, text);
    if (covering.length) {
      const [top, topIndex] = covering[covering.length - 1];
      paint(mark, byName.get(top.category) ?? { slot: 7 });
      mark.dataset.span = String(topIndex);
      mark.title = covering.map(([s]) => s.category).join(' + ');
      if (covering.length > 1) mark.classList.add('overlap');
      if (covering.some(([, i]) => i === selectedSpan)) mark.classList.add('selected');
      const ending = covering.filter(([s]) => s.end === b);
      // The label is CSS generated content, so it is not part of the selectable response text.
      if (ending.length) {
        mark.dataset.label = ending.map(([s]) => `${byName.get(s.category)?.key ?? '?'} ${s.category}`).join(' + ');
      }
    }
    if (inPending) mark.classList.add('pending');
    parts.push(mark);
  }
  box.replaceChildren(...parts);
}

function renderSpanList() {
  const list = $('span-list');
  const items = st().spans.map((s, i) => {
    const category = byName.get(s.category) ?? { slot: 7, key: '?' };
    const swatch = h('span', { cls: 'swatch' }, `${category.key} ${s.category}`);
    paint(swatch, category);
    const explanation = h('input', {
      cls: 'explanation',
      attrs: { type: 'text', maxlength: '4000', placeholder: 'explanation (optional): why is this an error?', 'aria-label': `Explanation of span ${i + 1}`, dir: 'auto' },
    });
    explanation.value = s.explanation ?? '';
    explanation.addEventListener('input', () => { st().spans[i].explanation = explanation.value; saveDraft(); });
    // <bdi>: a right-to-left quote must not reorder the label, offsets and button around it
    return h('li', { cls: i === selectedSpan ? 'selected' : '', attrs: { 'data-index': String(i) } },
      swatch, ' ',
      h('q', {}, h('bdi', { text: s.text })),
      h('span', { cls: 'muted small', text: ` [${s.start}, ${s.end})` }),
      h('button', { cls: 'link remove', text: 'Remove', attrs: { type: 'button', 'aria-label': `Remove span ${s.text}` }, on: { click: () => removeSpan(i) } }),
      explanation);
  });
  list.replaceChildren(...items);
  if (!items.length) list.append(h('li', { cls: 'muted empty', text: st().noError ? 'Marked as having no error.' : 'No spans yet.' }));
}

function renderMissing() {
  const list = $('missing-list');
  const items = st().missing.map((n, i) => {
    const select = h('select', { attrs: { 'aria-label': `Kind of missing information ${i + 1}` } },
      ...missingKinds.map((kind) => h('option', { attrs: { value: kind }, text: kind })));
    select.value = n.type;
    select.addEventListener('change', () => change((s) => { s.missing[i].type = select.value; }));
    const evidence = n.passage === null
      ? h('span', { cls: 'muted', text: 'click the passage sentences that hold it' })
      : h('span', { cls: 'evidence', text: `passage ${n.passage}, sentence${n.sentences.length > 1 ? 's' : ''} ${n.sentences.join(', ')}` });
    const note = h('input', {
      cls: 'note',
      attrs: { type: 'text', maxlength: '4000', placeholder: 'note (optional): what is missing?', 'aria-label': `Note for missing information ${i + 1}`, dir: 'auto' },
    });
    note.value = n.note ?? '';
    note.addEventListener('input', () => { st().missing[i].note = note.value; saveDraft(); });
    const item = h('li', { cls: i === activeNote ? 'active' : '' },
      select, ' ', evidence, ' ',
      h('button', { cls: 'link remove', text: 'Remove', attrs: { type: 'button' }, on: { click: (e) => { e.stopPropagation(); removeNote(i); } } }),
      note);
    item.addEventListener('click', (e) => {
      if (e.target === select || e.target === note) return;
      activeNote = i;
      render();
    });
    return item;
  });
  list.replaceChildren(...items);
}

function removeNote(i) {
  change((s) => { s.missing.splice(i, 1); });
  activeNote = Math.min(activeNote, st().missing.length - 1);
  render();
}

// ---- drafts and submission ------------------------------------------------------------------------
/** The annotation as the server takes it. A draft leaves out notes that have no passage yet (a
 * submission keeps them, so the rules refuse it with a message rather than drop them silently). */
function body(draft = false) {
  const s = st();
  return {
    response_index: resp().index,
    spans: s.spans.map(({ start, end, category, text, explanation }) => ({ start, end, category, text, explanation: explanation ?? '' })),
    missing: s.missing.filter((n) => !draft || n.passage !== null)
      .map(({ type, passage, sentences, note }) => ({ type, passage, sentences, note: note ?? '' })),
    corrected: normalise(s.corrected),
    no_error: s.noError,
  };
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
    await postJSON(`/api/tasks/${task.id}/draft`, { ...body(true), idempotency_key: newKey(), base_version: version },
      task.csrf_token, { retries: 3, onRetry: () => setStatus(draftStatus, 'warn', 'Draft not saved yet: retrying…') });
    setStatus(draftStatus, 'ok', `Draft saved ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    setStatus(draftStatus, 'error', `Draft not saved: ${explainError(err)}`);
  }
}

/** What the server would refuse (the shared rules of rules.js), in the annotator's words. */
function problems() {
  const s = st();
  const out = [];
  s.missing.forEach((n, i) => {
    if (n.passage === null) out.push(`Missing-information note ${i + 1} has no evidence: click a passage sentence, or remove the note.`);
  });
  const b = body();
  b.missing = b.missing.filter((n) => n.passage !== null);
  const found = annotationProblems(b, {
    text: resp().text, passages: task.passages ?? [], categories: categories.map((c) => c.name), missingKinds,
  });
  for (const p of found) out.push(`${p.field}: ${p.message}.`);
  return out;
}

let submitting = false;
async function submit() {
  if (submitting) return;
  const status = $('submit-status');
  const found = problems();
  if (found.length) { setStatus(status, 'error', found.join(' ')); return; }
  const content = JSON.stringify(body());
  // The same content keeps its idempotency key, so a retried submission is stored once.
  if (!lastSubmit || lastSubmit.content !== content) lastSubmit = { content, key: newKey() };
  const payload = { ...JSON.parse(content), idempotency_key: lastSubmit.key, base_version: version };
  submitting = true;
  $('submit').disabled = true;
  // The submission supersedes any draft: drop a pending one, let one in flight finish first.
  saveDraft.cancel();
  await draftInFlight;
  setStatus(status, 'busy', 'Submitting…');
  try {
    const answer = await postJSON(`/api/tasks/${task.id}/submit`, payload, task.csrf_token, {
      onRetry: (n, ms) => setStatus(status, 'warn', `No answer from the server; retrying in ${Math.round(ms / 1000)} s (attempt ${n})…`),
    });
    version = answer.version ?? version;
    lastSubmit = null;
    st().submitted = true;
    setStatus(status, 'ok', `Submitted (version ${answer.version}).`);
    const next = states.findIndex((s) => !s.submitted);
    if (next >= 0) {
      show(next);
      setStatus(status, 'ok', `Submitted (version ${answer.version}); now response ${next + 1}.`);
    } else {
      setStatus(status, 'ok', `Submitted (version ${answer.version}). Back to your queue…`);
      setTimeout(() => window.location.assign('/'), 1200);
    }
  } catch (err) {
    if (err instanceof ApiError && err.status >= 400) lastSubmit = null; // refused: nothing stored
    showSubmitError(status, err);
  } finally {
    submitting = false;
    $('submit').disabled = false;
  }
}

function restoreLatest(latest) {
  if (!latest || typeof latest !== 'object') return;
  const i = responses.findIndex((r) => r.index === latest.response_index);
  if (i < 0) return;
  const cps = responses[i].cps;
  // Keep only spans that still quote the response exactly (the stored text is immutable).
  const spans = (latest.spans ?? []).filter((s) => cps.slice(s.start, s.end).join('') === s.text && byName.has(s.category))
    .map((s) => ({ start: s.start, end: s.end, category: s.category, text: s.text, explanation: s.explanation ?? '' }));
  Object.assign(states[i], {
    spans,
    missing: (latest.missing ?? []).map((n) => ({
      type: n.type, passage: n.passage, sentences: [...(n.sentences ?? [])], note: n.note ?? '',
    })),
    corrected: typeof latest.corrected === 'string' ? latest.corrected : responses[i].text,
    noError: Boolean(latest.no_error),
  });
  cur = i;
  activeNote = states[i].missing.length - 1; // passage clicks go on attaching to the last note
}

function show(i) {
  saveDraft.flush();
  cur = i;
  pending = null;
  selectedSpan = -1;
  activeNote = -1;
  warn('');
  render();
}

// ---- wiring -------------------------------------------------------------------------------------
$('prompt').textContent = task.prompt ?? '';
const passages = renderPassages($('passages'), task.passages ?? [], attachSentence);

const toolbar = $('categories');
for (const category of categories) {
  const button = h('button', {
    cls: 'cat',
    attrs: { type: 'button', title: `${category.name} (${category.rm_category ?? ''}) — key ${category.key}`, 'data-category': category.name },
    on: { click: () => addSpan(category) },
  }, h('kbd', { text: category.key }), ` ${category.name}`);
  paint(button, category);
  toolbar.append(button);
}

const responseBox = $('response');
document.addEventListener('mouseup', (event) => {
  if (event.button !== 0) return;
  const found = selectionInResponse(event.shiftKey);
  if (found) {
    pending = found;
    selectedSpan = -1;
    window.getSelection().removeAllRanges();
    render();
    warn('');
  } else if (responseBox.contains(event.target)) {
    const mark = event.target.closest('mark[data-span]');
    selectedSpan = mark ? Number(mark.dataset.span) : -1;
    pending = null;
    render();
  }
});

$('undo').addEventListener('click', undo);
$('redo').addEventListener('click', redo);
$('add-missing').addEventListener('click', () => addNote());
$('no-error').addEventListener('change', (event) => {
  const checked = event.target.checked;
  if (checked && (st().spans.length || st().missing.length)) {
    event.target.checked = false;
    setStatus($('submit-status'), 'warn', 'Remove the marked spans and missing-information notes before ticking "no error".');
    return;
  }
  change((s) => { s.noError = checked; });
});
$('corrected').addEventListener('input', (event) => {
  st().corrected = event.target.value;
  saveDraft();
});
$('submit').addEventListener('click', submit);
$('prev-response').addEventListener('click', () => show(cur - 1));
$('next-response').addEventListener('click', () => show(cur + 1));
$('response-nav').hidden = responses.length < 2;

document.addEventListener('keydown', (event) => {
  const ctrl = event.ctrlKey || event.metaKey;
  if (ctrl && event.key === 'Enter') { event.preventDefault(); submit(); return; }
  if (typingIn(event)) return;
  const key = event.key.toLowerCase();
  if (ctrl && key === 'z') { event.preventDefault(); event.shiftKey ? redo() : undo(); return; }
  if (ctrl && key === 'y') { event.preventDefault(); redo(); return; }
  if (ctrl || event.altKey) return;
  const category = categories.find((c) => c.key === event.key);
  if (category) { event.preventDefault(); addSpan(category); return; }
  if (event.key === '0') { $('no-error').click(); return; }
  if (key === 'm') { event.preventDefault(); addNote(); return; }
  if (event.key === 'Escape') { pending = null; selectedSpan = -1; render(); return; }
  if ((event.key === 'Delete' || event.key === 'Backspace') && selectedSpan >= 0) {
    event.preventDefault();
    removeSpan(selectedSpan);
  }
});

// A draft typed in the last moments before the tab closes still goes out (keepalive survives unload).
window.addEventListener('pagehide', () => {
  if (!saveDraft.pending()) return;
  fetch(`/api/tasks/${task.id}/draft`, {
    method: 'POST', keepalive: true, credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': task.csrf_token ?? '' },
    body: JSON.stringify({ ...body(true), idempotency_key: newKey(), base_version: version }),
  });
});

render();
