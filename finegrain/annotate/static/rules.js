// The annotation rules, as the page applies them before a submission leaves the browser. They
// mirror finegrain/data/annotations.py (check_annotation), which the server and `finegrain data
// check` apply: the server decides, this only lets the annotator hear about a problem first.
// tests/test_browser.py runs both on the same cases and requires the same verdicts.

/** Code-point offsets where a grapheme cluster (UAX #29, Intl.Segmenter) starts, and the length. */
export function graphemeBounds(text) {
  const bounds = new Set();
  let cp = 0;
  let u16 = 0;
  const seg = new Intl.Segmenter(undefined, { granularity: 'grapheme' });
  for (const { segment, index } of seg.segment(text)) {
    while (u16 < index) { // advance the code-point counter to this cluster's start
      const code = text.codePointAt(u16);
      u16 += code > 0xffff ? 2 : 1;
      cp += 1;
    }
    bounds.add(cp);
    void segment;
  }
  bounds.add(Array.from(text).length);
  return bounds;
}

/**
 * Problems of one annotation: [{field, message}], empty when the server would accept it.
 * `ann`: {spans: [{start, end, category, text}], missing: [{type, passage, sentences}], no_error}.
 * `ctx`: {text, passages: [{title, sentences}], categories: [names], missingKinds: [names]}.
 */
export function annotationProblems(ann, ctx) {
  const out = [];
  const add = (field, message) => out.push({ field, message });
  const cps = Array.from(ctx.text);
  const n = cps.length;
  const bounds = graphemeBounds(ctx.text);
  const good = [];
  (ann.spans ?? []).forEach((s, i) => {
    const w = `spans[${i}]`;
    let ok = true;
    if (!(s.start >= 0 && s.start <= n)) { add(`${w}.start`, `start is outside the response (length ${n})`); ok = false; }
    if (!(s.end >= 0 && s.end <= n)) { add(`${w}.end`, `end is outside the response (length ${n})`); ok = false; }
    if (!(s.start < s.end)) { add(`${w}.end`, `end must be greater than start (${s.start})`); ok = false; }
    if (!ctx.categories.includes(s.category)) { add(`${w}.category`, `unknown category ${s.category}`); ok = false; }
    if (ok && s.text != null && cps.slice(s.start, s.end).join('') !== s.text) {
      add(`${w}.text`, 'quoted text differs from the response'); ok = false;
    }
    if (ok) {
      for (const side of ['start', 'end']) {
        if (!bounds.has(s[side])) { add(`${w}.${side}`, `${side} splits a character (emoji sequence, flag or accented letter)`); ok = false; }
      }
    }
    if (ok) good.push([i, s]);
  });
  const ordered = [...good].sort((x, y) => x[1].start - y[1].start || x[1].end - y[1].end || x[0] - y[0]);
  ordered.forEach(([j, b], k) => {
    const hit = ordered.slice(0, k).find(([, a]) => a.start < b.end && b.start < a.end);
    if (!hit) return;
    const [i, a] = hit;
    const [first, second] = i < j ? [[i, a], [j, b]] : [[j, b], [i, a]];
    const same = a.start === b.start && a.end === b.end;
    add(`spans[${second[0]}]`, `${same ? 'the same text as' : 'overlaps'} spans[${first[0]}]: `
      + (same && a.category === b.category ? 'mark it once' : 'one category per stretch of text (the more severe one)'));
  });
  (ann.missing ?? []).forEach((m, i) => {
    const w = `missing[${i}]`;
    if (!ctx.missingKinds.includes(m.type)) add(`${w}.type`, `unknown missing-information type ${m.type}`);
    const p = ctx.passages[m.passage - 1];
    if (!Number.isInteger(m.passage) || !p) { add(`${w}.passage`, `no passage ${m.passage}`); return; }
    const count = (p.sentences ?? []).length;
    if (!(m.sentences ?? []).length) add(`${w}.sentences`, `no evidence: name at least one sentence of passage ${m.passage}`);
    (m.sentences ?? []).forEach((x, j) => {
      if (!(Number.isInteger(x) && x >= 0 && x <= count)) add(`${w}.sentences[${j}]`, `no sentence ${x} in passage ${m.passage}`);
    });
  });
  const marked = (ann.spans ?? []).length + (ann.missing ?? []).length;
  if (ann.no_error && marked) add('no_error', '"no error" is ticked, but spans or missing-information notes are marked');
  if (!ann.no_error && !marked) add('no_error', 'nothing is marked: mark an error span or a missing-information note, or tick "no error"');
  return out;
}
