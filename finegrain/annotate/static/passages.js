// Source passages with numbered sentences: passage p (from 1), sentence 0 = its title, 1..n its
// sentences. A click (or Enter) on a sentence reports (p, s) so it can be attached as evidence.
import { h } from './common.js';

export function renderPassages(container, passages, onPick) {
  const nodes = new Map(); // "p.s" -> element
  passages.forEach((passage, pi) => {
    const p = pi + 1;
    const sentence = (s, text, cls) => {
      const node = h('span', {
        cls: `sent ${cls}`,
        attrs: { role: 'button', tabindex: '0', 'data-p': p, 'data-s': s, title: `Passage ${p}, sentence ${s}` },
        on: {
          click: () => onPick(p, s),
          keydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onPick(p, s); } },
        },
      }, h('span', { cls: 'sent-no', text: `${p}.${s}` }), h('bdi', { text }));
      nodes.set(`${p}.${s}`, node);
      return node;
    };
    const sentences = passage.sentences ?? [];
    container.append(h('div', { cls: 'passage', attrs: { dir: 'auto' } },
      h('div', { cls: 'passage-title' }, sentence(0, passage.title ?? '', 'title')),
      h('p', {}, ...sentences.flatMap((text, si) => [sentence(si + 1, text, ''), ' ']))));
  });
  if (!passages.length) container.append(h('p', { cls: 'muted', text: 'No passages for this task.' }));

  return {
    /** Highlight the sentences cited by any note, and more strongly those of the active note. */
    mark(notes, active) {
      for (const node of nodes.values()) node.classList.remove('cited', 'attached');
      notes.forEach((note, i) => {
        for (const s of note.sentences) {
          nodes.get(`${note.passage}.${s}`)?.classList.add(i === active ? 'attached' : 'cited');
        }
      });
    },
  };
}
